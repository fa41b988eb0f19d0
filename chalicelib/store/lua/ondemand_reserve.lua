-- Reserve names for the VMs an open on-demand request still lacks in one pool, within the
-- on-demand clone limit (counted across pools). Counting and reserving in one script is what
-- stops two passes at once from building a request twice.
-- A VM of the request that left undelivered once its clone was under way (clone error, boot
-- timeout; its task noted or not), or whose clone the provider refused to start, is a failed attempt; a replacement is
-- reserved until more than max_retries attempts failed. One that left through no failure of its
-- clone (never started: the pass that reserved it was interrupted before asking the provider;
-- gone from the provider after its clone ended, or after its delivery) is replaced without
-- counting, and leaves the request's VM set: its record expires after its destroy (an hour for
-- one never held: lua/move.lua unused_record_ttl), and a VM of the set whose record is gone (a
-- failed attempt's, which stays) counts as a failed attempt, however long the request is open.
-- Each reserved name's record names its
-- reserver, as reserve_clones.lua does, so a restarted local stack knows one its dead
-- predecessor reserved (manager/pending.abandon_unstarted_clones), and says, as there, that its
-- clone is asked only once marked ('marks_asked': store/records.py MARKS_ASKED).
-- KEYS[1] the request, KEYS[2] its VMs, KEYS[3] the pool's open-request set, KEYS[4] the cloning
-- set, KEYS[5] the pool's pending set, KEYS[6] the pools' own clones in flight (pool_clones),
-- KEYS[7] its mark (reserve_clones.lua keeps both), KEYS[8] the service's open requests
-- (keys.ondemand_open_requests), KEYS[9] their scores' sum (keys.ondemand_open_waiting:
-- lua/open_waiting.lua), KEYS[10] the mark that the names where the pool's provider makes VMs
-- are known (keys.names_known: without it nothing is reserved when the caller looks at it, as
-- in reserve_clones.lua),
-- KEYS[11] the names held (keys.names_held: a candidate held is skipped), KEYS[12..] the
-- records of the candidate hostnames.
-- ARGV: request id, pool, clone_limit, max_retries, now, template, domain, record ttl seconds (unused),
--       vm_template (the records of the request's VMs and of the VMs cloning: keys.DERIVED_KEYS),
--       reserver (the process reserving, which starts the clones: store/leases.py holder_label),
--       the reason of a VM dropped as gone from the provider while running (manager/running.py),
--       whether to look at the names:known mark ('1': word names among the candidates; '':
--       random names only, or a caller outside a pass), the deadline (ms of Redis's clock, ''
--       none: store/deadline.py), the reserving run's lease token ('' outside a leased run:
--       written on each record as 'reserver_lease', as reserve_clones.lua does), the reason of a
--       VM dropped as gone while booting (manager/pending.py), how the reason of a VM whose clone
--       failed begins (store/ondemand.py GONE_WHILE_BOOTING, CLONE_FAILED: the reasons are
--       written and matched with the same constants), how the reason of a VM whose clone was
--       asked for and that the provider never made begins (CLONE_NOT_MADE: one marked
--       'clone_asked' and out of service for any other reason was under way, a failed attempt),
--       then the candidate hostnames, in the order of their records.
-- Run past its deadline (Redis frozen past the caller's socket timeout: its pass gave up on the
-- answer and starts no clone) it reserves nothing (the request's other changes hold whenever
-- they are made): names reserved then would hold the request's VMs and the on-demand clone
-- slots, unasked, for the start grace (manager/pending.py CLONE_START_GRACE_SECONDS).
-- A VM delivered and then gone from the provider (vCenter restarted empty, deleted by an admin)
-- before the request is ready was never its caller's to use: it leaves the request, which waits
-- for one VM more (its score in the open requests, which ondemand_deliver.lua counted down, goes
-- back up), and a new one is built, without counting a failed attempt (its clone did not fail;
-- vmpooler counts no retry for it either).
-- A request the API has not confirmed yet (its 'confirm_by': the create's answer may never have
-- reached its caller, who was told 503) gets nothing: "confirming" until its deadline, then
-- "unconfirmed" (the pass fails it), so no VM is built for a caller who does not know of it.
-- A request that asks nothing of this pool (an alias's pool chosen again when the same request was
-- sent again after a 503: lua/ondemand_create.lua) leaves the pool's open set here.
-- Returns JSON {"state": "open"|"confirming"|"unconfirmed"|"expired"|"retries_exhausted"|<closed
--               state>, "reserved": [...], "failed": n, "lacking": n}, and with the states that fail
-- the request its 'created' and 'token_user' ("created", "token_user"): the pass ends that request,
-- not another that took its id since (lua/ondemand_end.lua's check of the request read); "lacking": the VMs the request
-- still lacks in this pool, neither delivered nor building, before this reservation (those it
-- reserved included): 0 when this pool has nothing more to do for it but hand over what boots.
local key, vms_key, open_key, cloning_key, pending_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pool_clones_key, counted_key = KEYS[6], KEYS[7]
local id, pool = ARGV[1], ARGV[2]
local clone_limit, max_retries, now = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local template, domain, vm_template, reserver = ARGV[6], ARGV[7], ARGV[9], ARGV[10]
local gone_reason, names_checked, reserver_lease = ARGV[11], ARGV[12] == '1', ARGV[14]
local gone_booting, clone_failed, not_made = ARGV[15], ARGV[16], ARGV[17]
local request = redis.call('HMGET', key, 'state', 'entries', 'expires', 'lifetime', 'token_user', 'token_id',
  'confirm_by', 'token_entry', 'created')
if request[1] ~= 'open' then
  redis.call('ZREM', open_key, id)
  return cjson.encode({state = request[1] or 'missing', reserved = {}, failed = 0})
end
-- A deadline unreadable (broken by hand) reads as none: the request is served.
local confirm_by = finite(request[7])
if confirm_by ~= nil then
  if tonumber(now) >= confirm_by then
    return cjson.encode({state = 'unconfirmed', reserved = {}, failed = 0, created = request[9] or '',
      token_user = request[5] or ''})
  end
  return cjson.encode({state = 'confirming', reserved = {}, failed = 0})
end

local delivered, building, failed = {}, {}, 0
for _, hostname in ipairs(redis.call('ZRANGE', vms_key, 0, -1)) do
  local vm = redis.call('HMGET', key_of(vm_template, hostname),
    'request', 'request_name', 'state', 'delivered_at', 'clone_task', 'reason', 'clone_asked')
  local reason = vm[6] or ''
  if vm[1] ~= id then
    failed = failed + 1 -- its record gone: only a failed attempt's is left to expire in the set
  elseif vm[4] and vm[3] == 'destroyed' and reason == gone_reason then
    -- Delivered, then gone before the request was ready: built again, not a failed attempt.
    open_request_count(8, 9, id, 1)
    redis.call('ZREM', vms_key, hostname)
  elseif vm[4] then
    delivered[vm[2]] = (delivered[vm[2]] or 0) + 1
  elseif vm[3] == 'pending' then
    building[vm[2]] = (building[vm[2]] or 0) + 1
  elseif (vm[5] or string.sub(reason, 1, #clone_failed) == clone_failed
        or (vm[7] and string.sub(reason, 1, #not_made) ~= not_made))
      and not (vm[3] == 'destroyed' and reason == gone_booting) then
    -- Its clone under way: its task noted, or asked for (its task never noted: the pass killed
    -- after the provider's call, the call's answer lost) and then made, or still running past the
    -- pool's timeout. Before, one of those that never became ready left the set uncounted, and
    -- the request was built again until its ttl instead of failing after max_vm_retries.
    failed = failed + 1
  elseif vm[3] == 'completed' or vm[3] == 'destroyed' then
    -- Out of service through no failure of its clone (never started, gone while booting): built
    -- again, and out of the set before its record expires (a record gone is a failed attempt).
    redis.call('ZREM', vms_key, hostname)
  end
end
if failed > max_retries then
  return cjson.encode({state = 'retries_exhausted', reserved = {}, failed = failed, created = request[9] or '',
    token_user = request[5] or ''})
end
if tonumber(now) >= tonumber(request[3]) then
  return cjson.encode({state = 'expired', reserved = {}, failed = failed, created = request[9] or '',
    token_user = request[5] or ''})
end

-- Requests' clones in flight: the cloning set less the pools' own, without reading the fleet's
-- records. A pool clone its pool has not yet put in pool_clones counts as a request's until that
-- pool's next reservation repairs it: fewer slots for a moment, never more. Before the set is
-- first built (its mark missing) they are told apart by their records.
local in_flight = 0
if redis.call('EXISTS', counted_key) == 1 then
  in_flight = redis.call('ZCARD', cloning_key) - redis.call('ZINTERCARD', 2, cloning_key, pool_clones_key)
else
  for _, hostname in ipairs(redis.call('ZRANGE', cloning_key, 0, -1)) do
    if redis.call('HEXISTS', key_of(vm_template, hostname), 'request') == 1 then
      in_flight = in_flight + 1
    end
  end
end
local slots = clone_limit - in_flight
if (names_checked and redis.call('EXISTS', KEYS[10]) == 0) or past_deadline(ARGV[13]) then
  slots = 0
end
local reserved = {}
local candidate = 12
local asked, lacking = false, 0
for _, entry in ipairs(cjson.decode(request[2])) do
  if entry.pool == pool then
    asked = true
    local need = entry.count - (delivered[entry.name] or 0) - (building[entry.name] or 0)
    lacking = lacking + math.max(need, 0)
    while need > 0 and slots > 0 and candidate <= #KEYS do
      local vm_key, hostname = KEYS[candidate], ARGV[candidate + 6]
      candidate = candidate + 1
      if redis.call('EXISTS', vm_key) == 0 and not redis.call('ZSCORE', KEYS[11], hostname) then
        redis.call('HSET', vm_key, 'name', hostname, 'pool', pool, 'template', template,
          'domain', domain, 'state', 'pending', 'clone_start', now, 'pending_at', now,
          'request', id, 'request_name', entry.name, 'lifetime', request[4], 'reserver', reserver,
          'marks_asked', '1')
        if reserver_lease ~= '' then
          redis.call('HSET', vm_key, 'reserver_lease', reserver_lease)
        end
        if request[5] then
          redis.call('HSET', vm_key, 'token_user', request[5])
        end
        if request[6] then
          redis.call('HSET', vm_key, 'token_id', request[6])
        end
        if request[8] then
          redis.call('HSET', vm_key, 'token_entry', request[8])
        end
        redis.call('ZADD', pending_key, now, hostname)
        redis.call('ZADD', cloning_key, now, hostname)
        redis.call('ZADD', vms_key, now, hostname)
        reserved[#reserved + 1] = hostname
        need = need - 1
        slots = slots - 1
      end
    end
  end
end
if not asked then
  redis.call('ZREM', open_key, id)
end
-- The VM set lives as long as the request, never longer (nor shorter: a lifetime extended since
-- pushed both out, lua/vm_modify.lua). Set to data_ttl from each reservation, it outlived a request
-- still open when its record expired, and a new request under the id took its VMs over.
local left = redis.call('PTTL', key)
if left > 0 then
  redis.call('PEXPIRE', vms_key, left)
end
return cjson.encode({state = 'open', reserved = reserved, failed = failed, lacking = lacking})
