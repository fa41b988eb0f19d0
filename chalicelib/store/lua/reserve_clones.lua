-- Reserve names for new clones of a pool, within the pool's deficit and its fair share of the
-- global task limit. Counting and reserving in one script is what stops two passes at once from
-- over-cloning.
--
-- Fair share: every pool that is short registers its demand (clones in flight + clones it still
-- lacks, capped by its clone_limit) in the clone_demand set, scored by the slots it wants.
-- task_limit is divided among the registered pools max-min fairly (water-filling, smallest demand
-- first, ties by name): a pool wanting less than an equal share of what is left gets all it wants,
-- the rest is split evenly among the others. So a 20-VM pool short of 5 keeps getting slots while
-- a 500-VM pool refills, instead of whichever pool asks first taking every slot. A pool over its
-- share (it took slots before others became short) starts nothing until its clones finish; the
-- slots they free go to the others. Demands not renewed within demand_ttl seconds (a pool whose
-- passes stopped: removed from the config, its function dead) lapse: the clone_demand_renewed set
-- scores each pool by its last renewal.
--
-- The share is found without reading every demand (a read of them all cost 2.2 ms of Redis's one
-- thread per pass at 1,000 short pools, 21 ms at 5,000): every pool given all it wants takes at
-- least one slot of task_limit, so at most task_limit pools are, and they are the smallest
-- demands. Once one pool is given less than it wants, so is every larger one, and what is left
-- is split evenly among them in their order (the first ones get one slot more when it does not
-- divide). So the task_limit + 1 smallest demands, the number of demands and the pool's rank give
-- its share, whatever the number of short pools: the same share as sorting every demand.
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
-- KEYS[1] the pool's ready set, KEYS[2] its pending set, KEYS[3] clone_demand, KEYS[4]
-- clone_demand_renewed, KEYS[5] the cloning set, KEYS[6] pool_clones, KEYS[7] its mark, KEYS[8]
-- the pool's completed set (its clones held there, drained mid-clone: lua/move.lua), KEYS[9]
-- the pools' size overrides (POST /config/poolsize), KEYS[10] config_generation (the newest
-- pushed config a function runs with: lua/config_generation.lua), KEYS[11] the mark that the names
-- where the pool's provider makes VMs are known (keys.names_known), KEYS[12] the names held
-- (keys.names_held), KEYS[13..12+n] the hashes of the settings the pass read (its pool's runtime
-- template and reset), then the records of the candidate hostnames.
-- Without the mark (Redis lost its data since those names were read: manager/names.py) nothing
-- is reserved when the caller looks at it (its candidates hold word names): a VM Redis forgot may
-- hold one in another pool's folder, and a second VM of that name would give its user a hostname
-- that is another machine's (a caller with random names only does not look). A candidate held
-- (found by that read) is skipped as one a record holds.
-- ARGV: pool, size, task_limit, now, template, domain, clone_limit (0: none), demand_ttl,
--       vm_template (the records of VMs pending, or cloning when the set is rebuilt:
--       keys.DERIVED_KEYS), reserver (the process reserving, which starts the clones:
--       store/leases.py holder_label), generation (of the config the pass read its pool from;
--       0: a config no push orders), newest_ttl (config_generation.lua's ttl), whether to look at
--       the mark ('1': word names among the candidates; '': random names only, or a caller
--       outside a pass), the deadline (ms of Redis's clock, '' none: store/deadline.py), the
--       reserving run's lease token ('' outside a leased run: manager/runner.py), settings read
--       (a count n, then n pairs field, value as read: '' for none), then the candidate
--       hostnames, in the order of their records.
-- Each record names the lease its run held ('reserver_lease': store/records.py RESERVER_LEASE):
-- once another run holds the pool's lease, the reserving run can no longer mark it asked
-- (lua/clone_asked.lua), and that run's pass gives an unasked one back at once instead of after
-- the start grace (manager/pending.py).
-- Run past its deadline (Redis frozen, SIGSTOP, a long fork, behind a slow script, past the
-- caller's socket timeout: its pass gave up on the answer and will start no clone) it reserves
-- nothing and returns {}: the names it reserved would hold the pool's slots, unasked, for the
-- start grace (manager/pending.py CLONE_START_GRACE_SECONDS, 2 minutes) after every freeze.
-- Each record says its clone is asked only once marked ('marks_asked': store/records.py MARKS_ASKED),
-- so a VM drained before the mark is known never cloned (manager/pending.unnoted_clones_running).
-- Returns the hostnames reserved (each now has a pending record and a place in the cloning set).
local ready_key, pending_key, demand_key, renewed_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cloning_key, pool_clones_key, counted_key, completed_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local size_override_key, generation_key, names_known_key, names_held_key = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local pool, size, task_limit, now, template, domain, clone_limit, demand_ttl, vm_template, reserver =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6],
  tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], ARGV[10]
local generation, newest_ttl = tonumber(ARGV[11]), tonumber(ARGV[12])
local names_checked = ARGV[13] == '1'
if past_deadline(ARGV[14]) then
  return {}
end
local reserver_lease = ARGV[15]
local settings_read = tonumber(ARGV[16])
local FIRST_CANDIDATE = 13 + settings_read -- in KEYS; its hostname is ARGV[index + 4 + settings_read]
-- The pass read its size and template from a config a newer push has replaced since (a function
-- on the newer one noted it after this pass's run checked it was the newest:
-- manager/dispatch.py newest_config): it reserves nothing, as that run would have left the pool
-- to the newer config's functions had it looked later. Without this a pass under way when a push
-- lowered the size (or changed the template) started its share of task_limit clones for the old
-- config, which the next pass retired. The same test as lua/config_generation.lua's, so a newest
-- generation no function ran with for newest_ttl seconds gives way here too.
if generation > 0 then
  local newest, seen = string.match(redis.call('GET', generation_key) or '', '^(%S+) (%S+)$')
  newest, seen = tonumber(newest), tonumber(seen)
  if newest and seen and generation < newest and tonumber(now) - seen <= newest_ttl then
    return {}
  end
end
-- Likewise a runtime template change or reset (POST /config/pooltemplate, /poolreset) since the
-- pass read its pool's: its clones would be of the old template, or older than the reset, and
-- drained by the next pass (lua/move.lua's settings_read, for the VMs it makes ready).
for i = 1, settings_read do
  if (redis.call('HGET', KEYS[12 + i], ARGV[15 + 2 * i]) or '') ~= ARGV[16 + 2 * i] then
    return {}
  end
end
local STALE_SWEEP = 10 -- stale pool_clones entries dropped per call at most
local LAPSED_BATCH = 500 -- demands removed per command when many lapse at once (unpack's limit)
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
-- The size the pass read may be older than an override lowered since (the pass read it, then an
-- administrator shrank the pool, then the pass got here): an override wins over every other
-- size (sizing/controller.py), so one set now lower than the pass's caps it. Without this a
-- pass under way when POST /config/poolsize answered 201 started clones for the old size.
-- The stored form is store/pool_overrides.valid_size's: digits, anything else is no override.
local override = redis.call('HGET', size_override_key, pool)
if override and string.match(override, '^%d+$') and tonumber(override) < size then
  size = tonumber(override)
end
local pending = redis.call('ZRANGE', pending_key, 0, -1)
local deficit = size - redis.call('ZCARD', ready_key) - own(pending)
if deficit <= 0 then
  redis.call('ZREM', demand_key, pool)
  redis.call('ZREM', renewed_key, pool)
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
-- The pool's clones held in completed (drained while vCenter still runs them) use its slots too:
-- counted in its share, not only in task_limit, or a pool draining would take its share again
-- on top of them, from the pools waiting beside it.
local held = redis.call('ZINTERCARD', 2, completed_key, pool_clones_key)
local in_flight, in_flight_pool = redis.call('ZCARD', pool_clones_key), counted + held
local want = in_flight_pool + deficit
if clone_limit > 0 then
  want = math.min(want, clone_limit)
end
redis.call('ZADD', demand_key, want, pool)
redis.call('ZADD', renewed_key, now, pool)
-- The two sets name the same pools (every script and the store change both at once); a key lost
-- on its own (a failover, an operator) is repaired: a demand without its renewal time lapses now,
-- and its pool registers again on its next pass, as when every demand is lost.
local short = redis.call('ZCARD', demand_key) -- the pools short of VMs, this one included
if short ~= redis.call('ZCARD', renewed_key) then
  short = redis.call('ZINTERSTORE', demand_key, 2, demand_key, renewed_key, 'WEIGHTS', 1, 0)
  redis.call('ZINTERSTORE', renewed_key, 2, renewed_key, demand_key, 'WEIGHTS', 1, 0)
end
-- Demands not renewed within demand_ttl: each lapses once, so this costs nothing per pass.
local lapsed = redis.call('ZRANGEBYSCORE', renewed_key, '-inf',
  '(' .. string.format('%.17g', tonumber(now) - demand_ttl))
for first = 1, #lapsed, LAPSED_BATCH do
  local batch = {unpack(lapsed, first, math.min(first + LAPSED_BATCH - 1, #lapsed))}
  redis.call('ZREM', demand_key, unpack(batch))
  redis.call('ZREM', renewed_key, unpack(batch))
end
short = short - #lapsed
-- Water-filling over the smallest demands (see the top): at most task_limit pools get all they
-- want, each of them at least one slot. Read a few at a time, more each time: most often the
-- first pool is already given less than it wants (many short pools share a small task_limit).
local share, left, satisfied = 0, task_limit, 0
if task_limit > 0 then
  local chunk, capped = 8, false
  while not capped and satisfied < short do
    local last = math.min(satisfied + chunk, task_limit) -- index of the task_limit + 1-th at most
    local smallest = redis.call('ZRANGE', demand_key, satisfied, last, 'WITHSCORES')
    if #smallest == 0 then
      break
    end
    for i = 2, #smallest, 2 do
      local wanted = tonumber(smallest[i])
      if wanted > math.ceil(left / (short - satisfied)) then
        capped = true
        break
      end
      left, satisfied = left - wanted, satisfied + 1
    end
    chunk = chunk * 2
  end
  local rank = redis.call('ZRANK', demand_key, pool)
  if rank < satisfied then
    share = want
  else
    local given_less = short - satisfied
    share = math.floor(left / given_less)
    if rank - satisfied < left % given_less then
      share = share + 1
    end
  end
end
local wanted = math.min(deficit, share - in_flight_pool, task_limit - in_flight)
if names_checked and redis.call('EXISTS', names_known_key) == 0 then
  wanted = 0
end
local reserved = {}
for i = FIRST_CANDIDATE, #KEYS do
  if #reserved >= wanted then
    break
  end
  local vm_key, hostname = KEYS[i], ARGV[i + 4 + settings_read]
  if redis.call('EXISTS', vm_key) == 0 and not redis.call('ZSCORE', names_held_key, hostname) then
    redis.call('HSET', vm_key, 'name', hostname, 'pool', pool, 'template', template,
      'domain', domain, 'state', 'pending', 'clone_start', now, 'pending_at', now, 'reserver', reserver,
      'marks_asked', '1')
    if reserver_lease ~= '' then
      redis.call('HSET', vm_key, 'reserver_lease', reserver_lease)
    end
    redis.call('ZADD', pending_key, now, hostname)
    redis.call('ZADD', cloning_key, now, hostname)
    redis.call('ZADD', pool_clones_key, now, hostname)
    reserved[#reserved + 1] = hostname
  end
end
return reserved
