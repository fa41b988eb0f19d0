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
-- KEYS[1] the pool's ready set, KEYS[2] its pending set, KEYS[3] clone_demand, KEYS[4] the cloning
-- set, KEYS[5..] the records of the candidate hostnames.
-- ARGV: pool, size, task_limit, now, template, domain, clone_limit (0: none), demand_ttl,
--       vm_template (the records of VMs pending or cloning: keys.DERIVED_KEYS), reserver (the
--       process reserving, which starts the clones: store/leases.py holder_label), then the
--       candidate hostnames, in the order of their records.
-- Returns the hostnames reserved (each now has a pending record and a place in the cloning set).
local ready_key, pending_key, demand_key, cloning_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pool, size, task_limit, now, template, domain, clone_limit, demand_ttl, vm_template, reserver =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6],
  tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], ARGV[10]
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
local deficit = size - redis.call('ZCARD', ready_key) - own(redis.call('ZRANGE', pending_key, 0, -1))
if deficit <= 0 then
  redis.call('HDEL', demand_key, pool)
  return {}
end
local in_flight, in_flight_pool = 0, 0
for _, hostname in ipairs(redis.call('ZRANGE', cloning_key, 0, -1)) do
  local owner = owner_of(hostname)
  if not owner[2] then
    in_flight = in_flight + 1
    if owner[1] == pool then
      in_flight_pool = in_flight_pool + 1
    end
  end
end
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
for i = 5, #KEYS do
  if #reserved >= wanted then
    break
  end
  local vm_key, hostname = KEYS[i], ARGV[i + 6]
  if redis.call('EXISTS', vm_key) == 0 then
    redis.call('HSET', vm_key, 'name', hostname, 'pool', pool, 'template', template,
      'domain', domain, 'state', 'pending', 'clone_start', now, 'pending_at', now, 'reserver', reserver)
    redis.call('ZADD', pending_key, now, hostname)
    redis.call('ZADD', cloning_key, now, hostname)
    reserved[#reserved + 1] = hostname
  end
end
return reserved
