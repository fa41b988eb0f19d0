-- Create an on-demand request unless its id is taken (a duplicate is the client's 409), and
-- nudge the reconcile of each pool that builds it, in the same step.
-- KEYS[1] the request, then for each of the n pools to build in its open-request set and its wake
-- list (KEYS[2], KEYS[3], ...); then quota.lua's keys and the owner's requests set.
-- ARGV: request id, now, record ttl seconds, JSON {field: value}, VMs asked for,
-- JSON quota (see quota.lua; '' for none), n, the index in KEYS of the owner's requests set (0 for
-- none), how many of them to keep, then the templates of the keys named by the requests it
-- lists (keys.DERIVED_KEYS): request_template, request_vms_template, vm_template; then the index
-- in KEYS of the service's kept set, how many requests the service keeps, the owner's hash ('' for
-- none), the templates of an owner's holdings and requests sets, and the index in KEYS of the
-- record of the token the request was made with (0 for none: lua/token_live.lua); then the API's
-- socket timeout in ms ('' for none): the request's 'confirm_window' is Redis's clock plus it, and
-- a confirmation run later confirms nothing (lua/ondemand_confirm.lua).
-- Then the request's retry mark ('' for none: an id the service drew) and the messages of a
-- request failed having never been served (store.ondemand.NEVER_SERVED_MESSAGES, two); then how
-- long a ready request is kept at least (store.ondemand.READY_REQUEST_KEPT_SECONDS): the owner's
-- and the service's sets that bound how many requests are kept live at least that long from now,
-- and never less than they already would (EXPIRE NX, then GT): each script that sets a
-- request's expiry keeps them as long as the request (lua/ondemand_deliver.lua, lua/vm_modify.lua,
-- lua/ondemand_end.lua), so no quiet month leaves a request outside the bound.
-- Returns 1 when created (or, the same request sent again, to be confirmed), 0 when a request
-- with that id exists (vmpooler's 409), -1 when the token was deleted since the API checked it,
-- or the limit it would pass.
-- The same request sent again (the same 'retry_mark': its owner and what it asked for, hashed)
-- after its creation was answered 503, so never served (unconfirmed, or failed so or because no
-- replica had it, no VM reserved), is not a duplicate: its caller was told to send it again.
-- Within its confirmation window it is left as it is, to be confirmed by this caller (the first
-- may still confirm it too); past it, it is made again as a new one, limits checked.
local id, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local sets_ttl = math.max(ttl, tonumber(ARGV[23]))
local key = KEYS[1]
if token_gone(ARGV[18]) then
  return -1
end
local again = false
if redis.call('EXISTS', key) == 1 then
  local old = redis.call('HMGET', key, 'retry_mark', 'state', 'confirm_by', 'message', 'confirm_window')
  if ARGV[20] == '' or old[1] ~= ARGV[20] then
    return 0
  end
  local unserved = (old[3] and old[2] == 'open')
    or (old[2] == 'failed' and (old[4] == ARGV[21] or old[4] == ARGV[22]))
  if not unserved or redis.call('EXISTS', key_of(ARGV[11], request_part(id))) == 1 then
    return 0
  end
  local window = tonumber(old[5] or '')
  if old[2] == 'open' and window ~= nil then
    local time = redis.call('TIME')
    if tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) <= window then
      return 1
    end
  end
  again = true
end
local quota = nil
if ARGV[6] ~= '' then
  quota = cjson.decode(ARGV[6])
end
local refusal = quota_refusal(quota, tonumber(ARGV[5]), 1)
if refusal ~= nil then
  return refusal
end
quota_take_request(quota, id, tonumber(ARGV[5]))
if again then
  redis.call('DEL', key)
end
for field, value in pairs(cjson.decode(ARGV[4])) do
  redis.call('HSET', key, field, value)
end
if quota ~= nil then
  -- Whose holdings name it (quota.lua): the id may be another owner's request some day.
  redis.call('HSET', key, 'holdings', KEYS[quota.key])
end
if ARGV[19] ~= '' then
  local time = redis.call('TIME')
  local window = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + tonumber(ARGV[19])
  redis.call('HSET', key, 'confirm_window', string.format('%d', window))
end
redis.call('EXPIRE', key, ttl)
for i = 1, tonumber(ARGV[7]) do
  local open_key, wake_key = KEYS[2 * i], KEYS[2 * i + 1]
  redis.call('ZADD', open_key, now, id)
  redis.call('LPUSH', wake_key, '1')
  redis.call('LTRIM', wake_key, 0, 0)
  redis.call('EXPIRE', wake_key, 60)
end

-- Whether the request 'old_id' still matters to its owner's limits: open, or ready with a VM of
-- it running (one running under a name it had is another's: quota.lua, request_vms_running).
local request_template, request_vms_template, vm_template = ARGV[10], ARGV[11], ARGV[12]
local function holding(old_id)
  local state = redis.call('HGET', key_of(request_template, request_part(old_id)), 'state')
  if state == 'open' then
    return true
  end
  return state == 'ready' and request_vms_running(old_id, request_vms_template, vm_template) > 0
end

-- The owner keeps its newest requests only: each one it opens forgets its oldest that ended
-- beyond the number kept, so what a caller keeps in Redis is bounded however fast it opens and
-- deletes requests. The ones still holding something are kept, bounded by the owner's limits,
-- and looked at again after the others: a create looks at the 16 oldest only, forgetting those
-- that hold nothing, so an owner's ended requests beyond the bound go within a few creates
-- (one each, the most it adds, and up to 16). Before, it walked the owner's set from its oldest
-- until it had forgotten enough, every request still open or with a VM running ahead (as many
-- as the owner's limits let it hold) looked at by every create.
local kept_key, kept_in_total, owner = KEYS[tonumber(ARGV[13])], tonumber(ARGV[14]), ARGV[15]
local holdings_template, owned_template = ARGV[16], ARGV[17]
local owned_index = tonumber(ARGV[8])
if owned_index > 0 then
  local owned, kept = KEYS[owned_index], tonumber(ARGV[9])
  redis.call('ZADD', owned, now, id)
  redis.call('EXPIRE', owned, sets_ttl, 'NX') -- a set just made
  redis.call('EXPIRE', owned, sets_ttl, 'GT') -- never brought in
  local excess = redis.call('ZCARD', owned) - kept
  if excess > 0 then
    for _, old_id in ipairs(redis.call('ZRANGE', owned, 0, 15)) do
      if excess == 0 then
        break
      end
      local old = request_part(old_id)
      if old_id == id then
        break -- the request just made: nothing older is left to look at
      elseif holding(old_id) then
        redis.call('ZADD', owned, now, old_id)
      else
        redis.call('DEL', key_of(request_template, old), key_of(request_vms_template, old))
        redis.call('ZREM', owned, old_id)
        redis.call('ZREM', kept_key, owner .. ' ' .. old_id)
        excess = excess - 1
      end
    end
  end
end

-- The service keeps its newest requests only, whoever owns them: a caller with many addresses (an
-- IPv6 /48 holds 65,536 /64s, each an owner) or user names is many owners, each keeping its own,
-- so the owners' bound alone is no bound. Past the service's, the oldest that hold nothing are
-- forgotten with their place in their owner's sets (the member names the owner, so a record that
-- expired meanwhile is still cleared from them). One found still holding (open, or VMs running)
-- is looked at again after the others: the quotas bound how many there are, and no create walks
-- them all.
redis.call('ZADD', kept_key, now, owner .. ' ' .. id)
redis.call('EXPIRE', kept_key, sets_ttl, 'NX')
redis.call('EXPIRE', kept_key, sets_ttl, 'GT')
-- At most 100 forgotten per request, so a bound lowered by a config push costs no create a long
-- script: the excess goes over the next creates.
local excess = math.min(redis.call('ZCARD', kept_key) - kept_in_total, 100)
if excess > 0 then
  for _, member in ipairs(redis.call('ZRANGE', kept_key, 0, excess + 15)) do
    if excess == 0 then
      break
    end
    local at = string.find(member, ' ', 1, true)
    local old_owner, old_id = string.sub(member, 1, at - 1), string.sub(member, at + 1)
    local old = request_part(old_id)
    if holding(old_id) then
      redis.call('ZADD', kept_key, now, member)
    else
      redis.call('DEL', key_of(request_template, old), key_of(request_vms_template, old))
      redis.call('ZREM', kept_key, member)
      if old_owner ~= '' then
        redis.call('ZREM', key_of(owned_template, old_owner), old_id)
        redis.call('ZREM', key_of(holdings_template, old_owner), 'od:' .. old_id)
      end
      excess = excess - 1
    end
  end
end
return 1
