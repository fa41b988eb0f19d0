-- End an on-demand request (deleted by its user, or failed) and send every VM it still holds,
-- building or delivered, to completed to be destroyed. A ready request cannot fail, only be
-- deleted; ending an ended request changes nothing. The pools' reconciles are nudged to
-- destroy the VMs at once.
-- ARGV: prefix, request id, new state ("deleted"|"failed"), message, now, VM reason, record ttl
-- Returns JSON {"result": "ended"|"already"|"missing", "state": ..., "pools": [...]}
local prefix, id, new_state, message, now, reason, ttl =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local key = prefix .. 'ondemand:' .. id
local request = redis.call('HMGET', key, 'state', 'entries')
local state = request[1]
if not state then
  return cjson.encode({result = 'missing', state = '', pools = {}})
end
if state == 'deleted' or state == 'failed' or (new_state == 'failed' and state ~= 'open') then
  return cjson.encode({result = 'already', state = state, pools = {}})
end
redis.call('HSET', key, 'state', new_state, 'message', message, 'ended_at', now)
local pools = {}
for _, entry in ipairs(cjson.decode(request[2])) do
  redis.call('ZREM', prefix .. 'ondemand:open:' .. entry.pool, id)
  pools[#pools + 1] = entry.pool
  local wake_key = prefix .. 'wake:' .. entry.pool
  redis.call('LPUSH', wake_key, '1')
  redis.call('LTRIM', wake_key, 0, 0)
  redis.call('EXPIRE', wake_key, 60)
end
for _, hostname in ipairs(redis.call('ZRANGE', key .. ':vms', 0, -1)) do
  local vm_key = prefix .. 'vm:' .. hostname
  local vm = redis.call('HMGET', vm_key, 'request', 'pool')
  if vm[1] == id then
    for _, from in ipairs({'pending', 'running'}) do
      if redis.call('ZREM', prefix .. 'pool:' .. vm[2] .. ':' .. from, hostname) == 1 then
        redis.call('ZREM', prefix .. 'cloning', hostname)
        redis.call('ZADD', prefix .. 'pool:' .. vm[2] .. ':completed', now, hostname)
        redis.call('HSET', vm_key, 'state', 'completed', 'completed_at', now, 'reason', reason)
        break
      end
    end
  end
end
redis.call('EXPIRE', key, ttl)
redis.call('EXPIRE', key .. ':vms', ttl)
return cjson.encode({result = 'ended', state = new_state, pools = pools})
