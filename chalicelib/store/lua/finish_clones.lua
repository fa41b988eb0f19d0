-- Clone tasks done: free each VM's place under the task limit and note when its clone ended, on
-- records that still exist (never leave a fragment behind).
-- KEYS[1] the cloning set, KEYS[2] pool_clones (its pools' own part: reserve_clones.lua), then one
-- VM record per VM. ARGV: now, then the VMs' hostnames (in the order of their records).
for first = 2, #ARGV, 500 do -- one ZREM for many (unpack has a limit)
  local last = math.min(first + 499, #ARGV)
  redis.call('ZREM', KEYS[1], unpack(ARGV, first, last))
  redis.call('ZREM', KEYS[2], unpack(ARGV, first, last))
end
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'clone_end', ARGV[1])
  end
end
return #KEYS - 2
