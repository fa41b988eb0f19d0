-- Rebuild the service's running set (keys.running, what the service-wide quota counts) from the
-- pools' running sets, and mark it whole. The scripts that move VMs keep it exact; this is the
-- safety net that bounds any drift in time (the scheduler's tick runs it every minute) and builds
-- it where it is missing (a new deployment, a key lost): quota.lua refuses to count without the mark.
-- KEYS[1] the service's running set, KEYS[2] its mark (keys.running_counted), KEYS[3] a scratch
-- set (keys.running_rebuild, never left behind), KEYS[4..] the running sets of the pools the
-- caller knows (configured, or removed and still draining).
-- ARGV: now, vm_template, running_template (keys.DERIVED_KEYS).
-- The union and the difference are built by ZUNIONSTORE and ZDIFFSTORE, in Redis's own code: no
-- member passes through Lua unless it is stale (member by member in Lua took 5-10 times as long).
-- A VM counted already that none of the given sets holds stays counted only while the running set
-- of the pool its record names holds it: a pool the caller's config does not list yet (a push it
-- has not read) keeps its VMs counted (a pool it was given cannot hold it, or the union would).
-- Returns {VMs counted now, VMs added, VMs removed, 1 if the mark was there}: VMs added or removed
-- under a mark are drift some path moving VMs left (a bug to find).
local all_key, counted_key, scratch_key = KEYS[1], KEYS[2], KEYS[3]
local now, vm_template, running_template = ARGV[1], ARGV[2], ARGV[3]
local CHUNK = 5000 -- keys per command (unpack stops near 8,000)
local was_whole = redis.call('EXISTS', counted_key)
redis.call('DEL', scratch_key)
for first = 4, #KEYS, CHUNK do
  local last = math.min(first + CHUNK - 1, #KEYS)
  redis.call('ZUNIONSTORE', scratch_key, last - first + 2, scratch_key, unpack(KEYS, first, last))
end
local union = redis.call('ZCARD', scratch_key)
local before = redis.call('ZCARD', all_key)
-- What was counted that the union lacks (usually nothing), left in the old set: it is replaced below.
local stale = redis.call('ZDIFFSTORE', all_key, 2, all_key, scratch_key)
local kept = 0
if stale > 0 then
  local entries = redis.call('ZRANGE', all_key, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local host = entries[i]
    local pool = redis.call('HGET', key_of(vm_template, host), 'pool')
    if pool and redis.call('ZSCORE', key_of(running_template, pool), host) then
      redis.call('ZADD', scratch_key, entries[i + 1], host)
      kept = kept + 1
    end
  end
end
if union + kept == 0 then
  redis.call('DEL', all_key)
else
  redis.call('RENAME', scratch_key, all_key)
end
redis.call('SET', counted_key, now)
return {union + kept, union - (before - stale), stale - kept, was_whole}
