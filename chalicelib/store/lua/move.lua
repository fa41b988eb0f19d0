-- Move one VM from one state to another, only if it is still in the state the caller saw.
-- This is what keeps a pass from reaping a VM that was checked out after it looked.
-- ARGV: prefix, hostname, pool, from_state, to_state, now, record_ttl_seconds, nudge, field, value, ...
-- to_state "destroyed" takes the VM out of every set and lets its record expire after the ttl.
-- nudge "1" wakes the pool's reconcile (a move made by the API, such as returning a VM).
-- pool '' means the pool its record names (DELETE /vm/<hostname>: one round trip, no read first).
-- Returns 1 (or, when pool was '', the pool's name) when moved, 0 when the VM was no longer in
-- from_state.
local prefix, hostname, pool, from_state, to_state, now, ttl, nudge =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local moved = 1
if pool == '' then
  pool = redis.call('HGET', prefix .. 'vm:' .. hostname, 'pool')
  if not pool then
    return 0
  end
  moved = pool
end
if redis.call('ZREM', prefix .. 'pool:' .. pool .. ':' .. from_state, hostname) == 0 then
  return 0
end
redis.call('ZREM', prefix .. 'cloning', hostname)
local vm_key = prefix .. 'vm:' .. hostname
redis.call('HSET', vm_key, 'state', to_state, to_state .. '_at', now)
for i = 9, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', vm_key, ARGV[i])
  else
    redis.call('HSET', vm_key, ARGV[i], ARGV[i + 1])
  end
end
if to_state == 'destroyed' then
  redis.call('EXPIRE', vm_key, ttl)
else
  redis.call('ZADD', prefix .. 'pool:' .. pool .. ':' .. to_state, now, hostname)
end
if nudge == '1' then
  local wake_key = prefix .. 'wake:' .. pool
  redis.call('LPUSH', wake_key, '1')
  redis.call('LTRIM', wake_key, 0, 0)
  redis.call('EXPIRE', wake_key, 60)
end
return moved
