-- Set or remove runtime overrides of one setting for many pools at once (POST /config/poolsize,
-- /config/pooltemplate, /config/clonetarget, /poolreset): every pool of a request changes, or none
-- does.
-- KEYS[1] the setting's hash (pool -> value), KEYS[2] the ready fence (keys.ready_fence), KEYS[3]
-- the request's settled mark (store/settle.py), then the wake list of each pool of ARGV in its
-- order, then (when given) the record of the token the change was asked with
-- (lua/token_live.lua). ARGV[1] the change's id when the setting's change makes the pool's ready
-- VMs stale (a template, a reset), else ''; ARGV[2] the deadline on Redis's clock (ms; '' for
-- none: Store.answer_deadline) after which the API has given up on this answer and said the
-- change failed; ARGV[3] the token record's index in KEYS (0: none); ARGV[4] seconds the settled
-- mark lives; then pool, value pairs, an empty value removing the pool's override (back to its
-- configured value).
-- Each pool whose override changed is nudged (its wake list), in this step: an answer that says
-- it changed never comes with a failed nudge. Each pool whose ready VMs went stale is fenced with
-- the change's id: no checkout takes its ready VMs until a pass that read this change has
-- drained them (lua/checkout.lua, PoolOverrides.lift_fence). Returns {the pools whose override
-- changed, for each pool in ARGV's order the value this step removed ('' when none, or when the
-- pool was given a value: a POST of thousands of pools gets none of theirs back)}: what a
-- DELETE removed is the value it answers, read in its own step, not before it (another change
-- may land in between). The answer is kept in the settled mark (JSON), for the API to answer
-- with should it be lost (a POST /poolreset answered 503 and retried reset the pool twice). -1
-- when the token was deleted since the API checked it, or -2 when the deadline has passed or the
-- settled mark is there already (the API, this answer lost, settled the change as not made);
-- nothing changed either way: the script waited in Redis, paused or behind a slow script, past
-- the API's socket timeout.
if token_gone(tonumber(ARGV[3])) then
  return -1
end
if past_deadline(ARGV[2]) or redis.call('EXISTS', KEYS[3]) == 1 then
  return -2
end
local fence = ARGV[1]
local changed = {}
local found = {}
for index = 5, #ARGV, 2 do
  local pool, value = ARGV[index], ARGV[index + 1]
  local before = redis.call('HGET', KEYS[1], pool)
  found[#found + 1] = (value == '' and before) or ''  -- a nil would end the array Redis answers
  local change = false
  if value == '' then
    if before then
      redis.call('HDEL', KEYS[1], pool)
      change = true
    end
  elseif before ~= value then
    redis.call('HSET', KEYS[1], pool, value)
    change = true
  end
  if change then
    changed[#changed + 1] = pool
    local wake_key = KEYS[3 + (index - 3) / 2]
    redis.call('LPUSH', wake_key, '1')
    redis.call('LTRIM', wake_key, 0, 0)
    redis.call('EXPIRE', wake_key, 60)
    if fence ~= '' then
      redis.call('HSET', KEYS[2], pool, fence)
    end
  end
end
redis.call('SET', KEYS[3], cjson.encode({changed, found}), 'EX', ARGV[4])
return {changed, found}
