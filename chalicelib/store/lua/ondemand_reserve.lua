-- Reserve names for the VMs an open on-demand request still lacks in one pool, within the
-- on-demand clone limit (counted across pools). Counting and reserving in one script is what
-- stops two passes at once from building a request twice.
-- A VM of the request that left without being delivered (clone error, boot timeout) is a
-- failed attempt; a replacement is reserved until more than max_retries attempts failed. A name
-- whose clone never started (the pass that reserved it was interrupted) is replaced without
-- counting: that was our failure, not the provider's.
-- ARGV: prefix, request id, pool, clone_limit, max_retries, now, template, domain,
--       record ttl seconds, candidate hostnames...
-- Returns JSON {"state": "open"|"expired"|"retries_exhausted"|<closed state>, "reserved": [...],
--               "failed": n}
local prefix, id, pool = ARGV[1], ARGV[2], ARGV[3]
local clone_limit, max_retries, now = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local template, domain, ttl = ARGV[7], ARGV[8], tonumber(ARGV[9])
local key = prefix .. 'ondemand:' .. id
local vms_key = key .. ':vms'
local request = redis.call('HMGET', key, 'state', 'entries', 'expires', 'lifetime', 'token_user', 'token_id')
if request[1] ~= 'open' then
  redis.call('ZREM', prefix .. 'ondemand:open:' .. pool, id)
  return cjson.encode({state = request[1] or 'missing', reserved = {}, failed = 0})
end

local delivered, building, failed = {}, {}, 0
for _, hostname in ipairs(redis.call('ZRANGE', vms_key, 0, -1)) do
  local vm = redis.call('HMGET', prefix .. 'vm:' .. hostname,
    'request', 'request_name', 'state', 'delivered_at', 'clone_task', 'reason')
  if vm[1] ~= id then
    failed = failed + 1
  elseif vm[4] then
    delivered[vm[2]] = (delivered[vm[2]] or 0) + 1
  elseif vm[3] == 'pending' then
    building[vm[2]] = (building[vm[2]] or 0) + 1
  elseif vm[5] or string.find(vm[6] or '', '^clone failed') then
    failed = failed + 1
  end
end
if failed > max_retries then
  return cjson.encode({state = 'retries_exhausted', reserved = {}, failed = failed})
end
if tonumber(now) >= tonumber(request[3]) then
  return cjson.encode({state = 'expired', reserved = {}, failed = failed})
end

local in_flight = 0
for _, hostname in ipairs(redis.call('ZRANGE', prefix .. 'cloning', 0, -1)) do
  if redis.call('HEXISTS', prefix .. 'vm:' .. hostname, 'request') == 1 then
    in_flight = in_flight + 1
  end
end
local slots = clone_limit - in_flight
local reserved = {}
local candidate = 10
for _, entry in ipairs(cjson.decode(request[2])) do
  if entry.pool == pool then
    local need = entry.count - (delivered[entry.name] or 0) - (building[entry.name] or 0)
    while need > 0 and slots > 0 and candidate <= #ARGV do
      local hostname = ARGV[candidate]
      candidate = candidate + 1
      local vm_key = prefix .. 'vm:' .. hostname
      if redis.call('EXISTS', vm_key) == 0 then
        redis.call('HSET', vm_key, 'name', hostname, 'pool', pool, 'template', template,
          'domain', domain, 'state', 'pending', 'clone_start', now, 'pending_at', now,
          'request', id, 'request_name', entry.name, 'lifetime', request[4])
        if request[5] then
          redis.call('HSET', vm_key, 'token_user', request[5])
        end
        if request[6] then
          redis.call('HSET', vm_key, 'token_id', request[6])
        end
        redis.call('ZADD', prefix .. 'pool:' .. pool .. ':pending', now, hostname)
        redis.call('ZADD', prefix .. 'cloning', now, hostname)
        redis.call('ZADD', vms_key, now, hostname)
        reserved[#reserved + 1] = hostname
        need = need - 1
        slots = slots - 1
      end
    end
  end
end
redis.call('EXPIRE', vms_key, ttl)
return cjson.encode({state = 'open', reserved = reserved, failed = failed})
