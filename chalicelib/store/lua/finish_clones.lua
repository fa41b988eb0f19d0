-- Clone tasks done: free each VM's place under the task limit and note when its clone ended, on
-- records that still exist (never leave a fragment behind).
-- KEYS[1] the cloning set, then one VM record per VM. ARGV: now, then the VMs' hostnames (in
-- the order of their records).
for first = 2, #ARGV, 500 do -- one ZREM for many (unpack has a limit)
  redis.call('ZREM', KEYS[1], unpack(ARGV, first, math.min(first + 499, #ARGV)))
end
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'clone_end', ARGV[1])
  end
end
return #KEYS - 1
