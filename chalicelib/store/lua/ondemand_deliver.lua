-- Hand a booted on-demand VM to its request: pending -> running (checked out for the request),
-- never through ready, so a plain checkout can never take it. The request becomes ready when
-- its last VM arrives. A VM whose request ended meanwhile goes to completed instead.
-- ARGV: prefix, hostname, pool, now, ip, host
-- Returns JSON {"moved": bool, "state": the request's state afterwards}
local prefix, hostname, pool, now, ip, host = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local vm_key = prefix .. 'vm:' .. hostname
local id = redis.call('HGET', vm_key, 'request')
local pending_key = prefix .. 'pool:' .. pool .. ':pending'
if not id or not redis.call('ZSCORE', pending_key, hostname) then
  return cjson.encode({moved = false, state = ''})
end
local key = prefix .. 'ondemand:' .. id
local request = redis.call('HMGET', key, 'state', 'entries')
redis.call('ZREM', pending_key, hostname)
redis.call('ZREM', prefix .. 'cloning', hostname)
if request[1] ~= 'open' then
  redis.call('ZADD', prefix .. 'pool:' .. pool .. ':completed', now, hostname)
  redis.call('HSET', vm_key, 'state', 'completed', 'completed_at', now,
    'reason', 'its on-demand request is ' .. (request[1] or 'gone'))
  return cjson.encode({moved = false, state = request[1] or 'missing'})
end
redis.call('ZADD', prefix .. 'pool:' .. pool .. ':running', now, hostname)
redis.call('ZADD', prefix .. 'pool:' .. pool .. ':running_due', now, hostname) -- see checkout.lua
redis.call('HSET', vm_key, 'state', 'running', 'running_at', now, 'ready_at', now,
  'checkout', now, 'delivered_at', now, 'ip', ip, 'host', host,
  'change_seq', redis.call('GET', prefix .. 'changes') or '0')
redis.call('HDEL', vm_key, 'not_ready_reason')

local delivered = {}
for _, member in ipairs(redis.call('ZRANGE', key .. ':vms', 0, -1)) do
  local vm = redis.call('HMGET', prefix .. 'vm:' .. member, 'request', 'request_name', 'delivered_at')
  if vm[1] == id and vm[3] then
    delivered[vm[2]] = (delivered[vm[2]] or 0) + 1
  end
end
local entries = cjson.decode(request[2])
for _, entry in ipairs(entries) do
  if (delivered[entry.name] or 0) < entry.count then
    return cjson.encode({moved = true, state = 'open'})
  end
end
redis.call('HSET', key, 'state', 'ready', 'ready_at', now)
for _, entry in ipairs(entries) do
  redis.call('ZREM', prefix .. 'ondemand:open:' .. entry.pool, id)
end
return cjson.encode({moved = true, state = 'ready'})
