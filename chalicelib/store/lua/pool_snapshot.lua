-- A pool's state for a pass that looks only at the VMs that may need something (Store.pool_snapshot_due):
-- every pending, completed and discovered VM; ready VMs whose ready_ttl has passed; running VMs
-- due for a look (running_due); and, in whichever state they are, the VMs of ARGV[4..].
-- KEYS: the pool's pending, ready, running, completed, discovered sets, its running_due set,
--       cloning, clone_demand, the pool's ready_checked.
-- ARGV: pool, now, ready since at most (now - ready_ttl), hostname...
-- Returns {count per state, members per state (hostname, score, ...), cloning total,
--          whether the pool has a clone demand, ready_checked}.
local counts, members = {}, {}
for i = 1, 5 do
  counts[i] = redis.call('ZCARD', KEYS[i])
end
members[1] = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
members[2] = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3], 'WITHSCORES')
members[3] = {}
members[4] = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
members[5] = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
local listed = {}
for _, hostname in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', ARGV[2])) do
  local since = redis.call('ZSCORE', KEYS[3], hostname)
  if since then
    table.insert(members[3], hostname)
    table.insert(members[3], since)
    listed[hostname] = true
  else
    redis.call('ZREM', KEYS[6], hostname) -- returned or reaped since it was scheduled
  end
end
-- A VM is in one state at a time: one listed already (the states listed whole, the ready VMs
-- past ready_ttl, the running VMs due) is not looked for in ready and running.
for _, state in ipairs({1, 2, 4, 5}) do
  for i = 1, #members[state], 2 do
    listed[members[state][i]] = true
  end
end
for i = 4, #ARGV do
  local hostname = ARGV[i]
  if not listed[hostname] then
    listed[hostname] = true
    for state = 2, 3 do -- the other states are listed whole
      local since = redis.call('ZSCORE', KEYS[state], hostname)
      if since then
        table.insert(members[state], hostname)
        table.insert(members[state], since)
      end
    end
  end
end
local wants_clones = redis.call('ZSCORE', KEYS[8], ARGV[1]) and 1 or 0
return {counts, members, redis.call('ZCARD', KEYS[7]), wants_clones,
  redis.call('GET', KEYS[9]) or ''}
