-- Record a VM found in a pool's folder that no state knows, unless a live record claims it.
-- A record left by a destroyed VM does not count: that VM came back and must go again.
-- KEYS[1] the VM's record, KEYS[2] the changes counter, KEYS[3] the pool's discovered set.
-- ARGV: hostname, pool, now (when the pass began, before its inventory), field, value, ...
-- Returns 1 when recorded, 0 otherwise.
local vm_key, changes_key, discovered_key = KEYS[1], KEYS[2], KEYS[3]
local hostname, pool, now = ARGV[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', vm_key, 'state')
if state and state ~= 'destroyed' then
  return 0
end
-- Destroyed at or after this pass began: the pass's inventory predates the destroy (another pass
-- finished it meanwhile), so the VM is not back; rediscovering it would overwrite its record.
if state == 'destroyed' and tonumber(redis.call('HGET', vm_key, 'destroyed_at') or '0') >= tonumber(now) then
  return 0
end
redis.call('DEL', vm_key)
redis.call('HSET', vm_key, 'name', hostname, 'pool', pool, 'state', 'discovered', 'discovered_at', now,
  'change_seq', redis.call('GET', changes_key) or '0')
for i = 4, #ARGV, 2 do
  redis.call('HSET', vm_key, ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', discovered_key, now, hostname)
return 1
