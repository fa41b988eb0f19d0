-- Reserve names for new clones of a pool, within the pool's deficit and its fair share of the
-- global task limit. Counting and reserving in one script is what stops two passes at once from
-- over-cloning.
--
-- Fair share: every pool that is short registers its demand (clones in flight + clones it still
-- lacks, capped by its clone_limit) in the clone_demand hash. task_limit is divided among the
-- registered pools max-min fairly (water-filling): a pool wanting less than an equal share gets
-- all it wants, the rest is split evenly among the others. So a 20-VM pool short of 5 keeps
-- getting slots while a 500-VM pool refills, instead of whichever pool asks first taking every
-- slot. A pool over its share (it took slots before others became short) starts nothing until
-- its clones finish; the slots they free go to the others. Demands not refreshed within
-- demand_ttl seconds (a pool whose passes stopped) are dropped.
--
-- Clones in flight are counted without reading the fleet's: the pool_clones set (keys.pool_clones)
-- holds the cloning set's VMs that are a pool's own (not an on-demand request's), kept by every
-- script that adds to or takes from the cloning set, so the service's count is its ZCARD and the
-- pool's the part of its pending set in it (a pool's clone is pending while it runs). Level-
-- triggered repair, so a lost or partial update cannot hold or leak slots for ever: without its
-- mark (keys.pool_clones_counted: a new deployment, a key lost) the set is rebuilt from the whole
-- cloning set once; each call checks the pool's own pending VMs against both sets and fixes them
-- when the counts disagree, and drops stale entries (no longer cloning) from the set's oldest end.
--
-- KEYS[1] the pool's ready set, KEYS[2] its pending set, KEYS[3] clone_demand, KEYS[4] the cloning
-- set, KEYS[5] pool_clones, KEYS[6] its mark, KEYS[7..] the records of the candidate hostnames.
-- ARGV: pool, size, task_limit, now, template, domain, clone_limit (0: none), demand_ttl,
--       vm_template (the records of VMs pending, or cloning when the set is rebuilt:
--       keys.DERIVED_KEYS), reserver (the process reserving, which starts the clones:
--       store/leases.py holder_label), then the candidate hostnames, in the order of their records.
-- Returns the hostnames reserved (each now has a pending record and a place in the cloning set).
local ready_key, pending_key, demand_key, cloning_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pool_clones_key, counted_key = KEYS[5], KEYS[6]
local pool, size, task_limit, now, template, domain, clone_limit, demand_ttl, vm_template, reserver =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6],
  tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], ARGV[10]
local FIRST_CANDIDATE = 7 -- in KEYS; its hostname is ARGV[index + 4]
local STALE_SWEEP = 10 -- stale pool_clones entries dropped per call at most
-- An in-flight VM's pool and, when it is built for an on-demand request, the request (false
-- when none), read from its record once: a pending VM is most often in the cloning set too, and
-- a burst holds hundreds of each.
local owners = {}
local function owner_of(hostname)
  local owner = owners[hostname]
  if owner == nil then
    owner = redis.call('HMGET', key_of(vm_template, hostname), 'pool', 'request')
    owners[hostname] = owner
  end
  return owner
end
-- VMs built for on-demand requests (their record names the request) are not the pool's: they
-- neither fill its deficit nor use the task limit, which has ondemand_clone_limit beside it.
local function own(hostnames)
  local count = 0
  for _, hostname in ipairs(hostnames) do
    if not owner_of(hostname)[2] then
      count = count + 1
    end
  end
  return count
end
if redis.call('EXISTS', counted_key) == 0 then
  -- Rebuild: every VM cloning that is no request's (one without a record too: it holds its slot
  -- until the pass that started it finishes it, as it always did).
  redis.call('DEL', pool_clones_key)
  local entries = redis.call('ZRANGE', cloning_key, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    if not owner_of(entries[i])[2] then
      redis.call('ZADD', pool_clones_key, entries[i + 1], entries[i])
    end
  end
  redis.call('SET', counted_key, now)
end
local pending = redis.call('ZRANGE', pending_key, 0, -1)
local deficit = size - redis.call('ZCARD', ready_key) - own(pending)
if deficit <= 0 then
  redis.call('HDEL', demand_key, pool)
  return {}
end
-- The pool's clones in flight: its pending VMs in pool_clones. They must be exactly its own
-- (no request's) pending VMs that are cloning; checked by counts, in Redis's own code, and
-- repaired VM by VM only when the counts disagree.
local counted = redis.call('ZINTERCARD', 2, pending_key, pool_clones_key)
local counted_cloning = redis.call('ZINTERCARD', 3, pending_key, cloning_key, pool_clones_key)
local own_cloning = redis.call('ZINTERCARD', 2, pending_key, cloning_key)
for _, hostname in ipairs(pending) do
  if owner_of(hostname)[2] and redis.call('ZSCORE', cloning_key, hostname) then
    own_cloning = own_cloning - 1
  end
end
if counted ~= counted_cloning or counted_cloning ~= own_cloning then
  for _, hostname in ipairs(pending) do
    local since = redis.call('ZSCORE', cloning_key, hostname)
    if since and not owner_of(hostname)[2] then
      redis.call('ZADD', pool_clones_key, since, hostname)
    else
      redis.call('ZREM', pool_clones_key, hostname)
    end
  end
  counted = own_cloning
end
-- Entries whose clone left the cloning set by a path that missed this set: the oldest first, as
-- any clone leaves the cloning set within its timeout, so a stale one comes to this end.
for _ = 1, STALE_SWEEP do
  local oldest = redis.call('ZRANGE', pool_clones_key, 0, 0)[1]
  if not oldest or redis.call('ZSCORE', cloning_key, oldest) then
    break
  end
  redis.call('ZREM', pool_clones_key, oldest)
end
local in_flight, in_flight_pool = redis.call('ZCARD', pool_clones_key), counted
local want = in_flight_pool + deficit
if clone_limit > 0 then
  want = math.min(want, clone_limit)
end
redis.call('HSET', demand_key, pool, want .. ' ' .. now)
-- Every live demand, smallest first (ties by name: every pool computes the same shares).
local demands = {}
local fields = redis.call('HGETALL', demand_key)
for i = 1, #fields, 2 do
  local wanted, since = string.match(fields[i + 1], '^(%S+) (%S+)$')
  if wanted and tonumber(now) - tonumber(since) <= demand_ttl then
    demands[#demands + 1] = {fields[i], tonumber(wanted)}
  else
    redis.call('HDEL', demand_key, fields[i])
  end
end
table.sort(demands, function(a, b)
  if a[2] ~= b[2] then
    return a[2] < b[2]
  end
  return a[1] < b[1]
end)
local left, share = task_limit, 0
for i, entry in ipairs(demands) do
  local given = math.min(entry[2], math.ceil(left / (#demands - i + 1)))
  if entry[1] == pool then
    share = given
    break
  end
  left = math.max(left - given, 0)
end
local wanted = math.min(deficit, share - in_flight_pool, task_limit - in_flight)
local reserved = {}
for i = FIRST_CANDIDATE, #KEYS do
  if #reserved >= wanted then
    break
  end
  local vm_key, hostname = KEYS[i], ARGV[i + 4]
  if redis.call('EXISTS', vm_key) == 0 then
    redis.call('HSET', vm_key, 'name', hostname, 'pool', pool, 'template', template,
      'domain', domain, 'state', 'pending', 'clone_start', now, 'pending_at', now, 'reserver', reserver)
    redis.call('ZADD', pending_key, now, hostname)
    redis.call('ZADD', cloning_key, now, hostname)
    redis.call('ZADD', pool_clones_key, now, hostname)
    reserved[#reserved + 1] = hostname
  end
end
return reserved
