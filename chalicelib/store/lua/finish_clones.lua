-- Clone tasks done: free each VM's place under the task limit and note when its clone ended, on
-- records that still exist (never leave a fragment behind).
-- KEYS[1] the cloning set, then one VM record per VM. ARGV: now, then the VMs' hostnames (in
-- the order of their records).
for i = 2, #KEYS do
  redis.call('ZREM', KEYS[1], ARGV[i])
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'clone_end', ARGV[1])
  end
end
return #KEYS - 1
