-- Hand a booted on-demand VM to its request: pending -> running (checked out for the request),
-- never through ready, so a plain checkout can never take it. The request becomes ready when
-- its last VM arrives. A VM whose request ended meanwhile goes to completed instead.
-- KEYS[1] the VM's record, KEYS[2..4] its pool's pending, running and completed sets, KEYS[5] the
-- cloning set, KEYS[6] the changes counter, KEYS[7] its pool's running_due set, KEYS[8] the
-- service's open requests (keys.ondemand_open_requests), KEYS[9] the service's running set
-- (keys.running), KEYS[10] the cloning set's pools' own part (keys.pool_clones: a request's VM is
-- never there; taken out all the same, so no path leaves a VM counted there once it stops cloning),
-- KEYS[11] the sum of the open requests' scores (keys.ondemand_open_waiting: lua/open_waiting.lua),
-- KEYS[12] the service's kept requests (keys.ondemand_kept_requests).
-- ARGV: hostname, now, ip, host, then the templates of the keys named by the request the record
-- names (keys.DERIVED_KEYS): request_template, request_vms_template, vm_template, open_template;
-- then the reason of a VM dropped as gone from the provider while running: one delivered and gone
-- since is not counted (ondemand_reserve.lua takes it out of the request and builds another);
-- then the record ttl seconds (data_ttl) and how long a ready request is kept at least
-- (store.ondemand.READY_REQUEST_KEPT_SECONDS), then the templates of an owner's holdings and requests
-- sets (keys.holdings, keys.owner_requests).
-- The delivery that makes the request ready sets its expiry, and its VM set's, from then on: that
-- least, or data_ttl past the latest end of its VMs' lifetimes if later (their records, destroyed,
-- answer that long), so its user can read it and release its VMs by its id while they run. Its
-- expiry until then was data_ttl from its creation, which a VM kept longer outlived (a 404, and
-- no DELETE /ondemandvm, while it ran). A lifetime extended later pushes it out (vm_modify.lua).
-- The sets that count it toward the bounds on kept requests are kept as long (lua/request_sets.lua):
-- a lifetime of years must not outlive the count (they lived 30 days past the last create).
-- Returns JSON {"moved": bool, "state": the request's state afterwards}
local vm_key, pending_key, running_key, completed_key, cloning_key, changes_key, running_due_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local all_running_key, pool_clones_key = KEYS[9], KEYS[10]
local hostname, now, ip, host = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local request_template, request_vms_template, vm_template, open_template = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local gone_reason, ttl, ready_kept = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local id = redis.call('HGET', vm_key, 'request')
if not id or not redis.call('ZSCORE', pending_key, hostname) then
  return cjson.encode({moved = false, state = ''})
end
local key = key_of(request_template, request_part(id))
local request = redis.call('HMGET', key, 'state', 'entries', 'holdings')
redis.call('ZREM', pending_key, hostname)
redis.call('ZREM', cloning_key, hostname)
redis.call('ZREM', pool_clones_key, hostname)
if request[1] ~= 'open' then
  redis.call('ZADD', completed_key, now, hostname)
  redis.call('HSET', vm_key, 'state', 'completed', 'completed_at', now,
    'reason', 'its on-demand request is ' .. (request[1] or 'gone'))
  return cjson.encode({moved = false, state = request[1] or 'missing'})
end
redis.call('ZADD', running_key, now, hostname)
redis.call('ZADD', all_running_key, now, hostname) -- what the service's quota counts
redis.call('ZADD', running_due_key, now, hostname) -- see checkout.lua
redis.call('HSET', vm_key, 'state', 'running', 'running_at', now, 'ready_at', now,
  'checkout', now, 'delivered_at', now, 'ip', ip, 'host', host,
  'change_seq', redis.call('GET', changes_key) or '0')
redis.call('HDEL', vm_key, 'not_ready_reason')
-- Counted by the quotas (quota.lua): one VM fewer to come, it is running.
open_request_count(8, 11, id, -1)

local delivered, latest_end = {}, tonumber(now)
local vms_key = key_of(request_vms_template, request_part(id))
for _, member in ipairs(redis.call('ZRANGE', vms_key, 0, -1)) do
  local vm = redis.call('HMGET', key_of(vm_template, member), 'request', 'request_name', 'delivered_at', 'state',
    'reason', 'checkout', 'lifetime')
  if vm[1] == id and vm[3] and not (vm[4] == 'destroyed' and vm[5] == gone_reason) then
    delivered[vm[2]] = (delivered[vm[2]] or 0) + 1
    -- An unreadable time (broken by hand) ends nothing later: the least holds.
    local checkout, lifetime = finite(vm[6]), finite(vm[7])
    if checkout and lifetime and checkout + lifetime * 3600 > latest_end then
      latest_end = checkout + lifetime * 3600
    end
  end
end
local entries = cjson.decode(request[2])
for _, entry in ipairs(entries) do
  if (delivered[entry.name] or 0) < entry.count then
    return cjson.encode({moved = true, state = 'open'})
  end
end
redis.call('HSET', key, 'state', 'ready', 'ready_at', now)
local kept = math.max(ready_kept, math.ceil(latest_end - tonumber(now) + ttl))
redis.call('EXPIRE', key, kept)
redis.call('EXPIRE', vms_key, kept)
keep_counting(request[3], kept, 12, ARGV[12], ARGV[13])
open_request_close(8, 11, id)
for _, entry in ipairs(entries) do
  redis.call('ZREM', key_of(open_template, entry.pool), id)
end
return cjson.encode({moved = true, state = 'ready'})
