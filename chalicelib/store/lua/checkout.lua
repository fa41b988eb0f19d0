-- Check out VMs from several pools in one atomic step: all of them or none.
-- KEYS: the changes counter and, for each pool a slot names, its ready and running sets, its wake
-- list and (demand sizing) its demand hash of the day, at the indexes the JSON names; quota.lua's
-- keys too.
-- ARGV[1] now (epoch seconds), ARGV[2] JSON checkout:
--   {"slots": [{"name": "<as requested>", "pools": ["p1", "p2"], "rest": <index in orders>}, ...],
--    "orders": [["p3", "p1", "p2", ...], ...],  (absent: none)
--    "fields": {"lifetime": "24", "token_user": "..."},
--    "quota": {see quota.lua; absent: no limits},
--    "checkout_id": "<random>", "confirm_by": <epoch seconds>,
--    "confirm_window_ms": <the API's socket timeout in ms (absent: none)>,
--    "changes": <KEYS index>, "running": <KEYS index of the service's running set (keys.running)>,
--    "vm_template": "<the records of the VMs it pops: keys.DERIVED_KEYS>",
--    "pools": {"p1": {"ready": <KEYS index>, "running": i, "wake": i, "demand": i, "demand_max": n
--              (demand sizing: its demand hash of the day, its sizing max)}},
--    "fence": <KEYS index of the pools' ready fences (keys.ready_fence): a fenced pool's ready VMs
--              are stale (a template change or reset no pass has drained yet) and none is taken>,
--    "demand": {"minute": 541, "ttl": 777600},   (only when a requested pool has demand sizing)
--    "token": <KEYS index of the record of the token the checkout was asked with (absent: none)>}
-- One slot per VM wanted; its pools in the order it prefers them (the caller's weighted or
-- random choice). A name of many pools sends each slot its first choices only, and 'rest', the
-- index of one order of all the name's pools that its slots try next: a request for 100 VMs of
-- an alias of 5,000 pools sent 500,000 names, which held Redis for half a second.
-- Returns JSON: {"ok": true, "vms": [[name, pool, hostname(, published domain)], ...]},
-- {"ok": false, "short": [names]},
-- {"ok": false, "quota": "<the limit it would pass, or 'recount': see quota.lua>"}, or
-- {"ok": false, "token": "gone"} when the token was deleted since the API checked it (lua/token_live.lua).
-- Each VM taken carries the checkout's id and stays unconfirmed (confirm_by) until the API, having
-- received this answer, confirms it (confirm.lua). A VM still unconfirmed at confirm_by was taken
-- by a request whose answer was lost: a reconcile pass returns it to ready (release.lua).
-- With confirm_window_ms, each VM also carries 'confirm_window' (Redis's clock, ms): a
-- confirmation run later than that (Redis paused after this answer: the API gave up waiting on
-- it and answered 503) confirms nothing (confirm.lua).
-- A VM a DNS plugin published (its record notes 'dns_name') comes with the domain it was published
-- under, which the API names it under, as GET /vm does until a pass moves its record.
-- On success it also nudges each pool it took from (wake:<pool>), so the pool's reconcile starts
-- the replacement clones at once. A miss writes nothing at all, except the demand count of a
-- demand-sized pool (its history must see the demand it could not serve).
local now = ARGV[1]
local checkout = cjson.decode(ARGV[2])
local slots = checkout.slots
local demand = checkout.demand
local pool_keys = checkout.pools
if token_gone(checkout.token) then
  return cjson.encode({ok = false, token = 'gone'})
end

-- Count VMs checked out ('c') or asked for in vain ('m') in the pool's bucket for this minute.
-- A bucket HINCRBY cannot add to (text or a number past 64 bits, written by hand) starts again
-- from this count: an error here, after the VMs were taken (a script is not rolled back), would
-- answer the caller an error for VMs checked out in its name.
local function count_demand(pool, kind, count)
  if demand == nil or pool_keys[pool].demand == nil then
    return false
  end
  local key, field = KEYS[pool_keys[pool].demand], kind .. demand.minute
  local added = redis.pcall('HINCRBY', key, field, count)
  if type(added) == 'table' and added.err then
    redis.call('HSET', key, field, count)
  end
  redis.call('EXPIRE', key, demand.ttl)
  return true
end

local available = {}
local function ready_count(pool)
  if available[pool] == nil then
    if redis.call('HEXISTS', KEYS[checkout.fence], pool) == 1 then
      available[pool] = 0 -- cloned for the template or before the reset the pool no longer has
    else
      available[pool] = redis.call('ZCARD', KEYS[pool_keys[pool].ready])
    end
  end
  return available[pool]
end

-- Plan first, without writing anything, so that a miss leaves Redis untouched. The plan is a
-- maximum matching of slots to ready VMs (Kuhn's augmenting paths, pools having capacities):
-- when the VMs can serve every slot, some plan does, even if a slot's first choice must give
-- way ('lin' = p1|p3 and 'p1', one ready VM each: 'lin' takes p3's).
local assigned = {}  -- slot index -> pool
local holders = {}   -- pool -> list of slot indexes assigned to it
local orders = checkout.orders or {}
local open_orders = {} -- order index -> its pools that have a ready VM, in order
local function open_order(index)
  if open_orders[index] == nil then
    local open = {}
    for _, pool in ipairs(orders[index]) do
      if ready_count(pool) > 0 then
        open[#open + 1] = pool
      end
    end
    open_orders[index] = open
  end
  return open_orders[index]
end
local place
local function place_in(slot, pool, visited)
  if visited[pool] then
    return false
  end
  visited[pool] = true
  holders[pool] = holders[pool] or {}
  local held = holders[pool]
  if #held < ready_count(pool) then
    held[#held + 1] = slot
    assigned[slot] = pool
    return true
  end
  for position, other in ipairs(held) do
    if place(other, visited) then
      -- 'other' moved to another pool (place() recorded it there): 'slot' takes its place
      held[position] = slot
      assigned[slot] = pool
      return true
    end
  end
  return false
end
-- The slot's own choices, then its name's order (pools without a ready VM left out: none can
-- take it, nor give way to it).
place = function(slot, visited)
  for _, pool in ipairs(slots[slot].pools) do
    if place_in(slot, pool, visited) then
      return true
    end
  end
  if slots[slot].rest ~= nil then
    for _, pool in ipairs(open_order(slots[slot].rest)) do
      if place_in(slot, pool, visited) then
        return true
      end
    end
  end
  return false
end

local short, seen_short = {}, {}
for index, slot in ipairs(slots) do
  -- Once a slot of a name found no VM, its name's other slots (the same pools in another order)
  -- find none either: a search that failed fails again after later ones succeeded (Kuhn). Not
  -- searching again keeps a request for 100 VMs of an alias of many empty pools from costing
  -- Redis 100 full searches (tens of ms).
  if not seen_short[slot.name] and not place(index, {}) then
    seen_short[slot.name] = true
    short[#short + 1] = slot.name
  end
end
if #short > 0 then
  if demand ~= nil then
    -- Each unserved slot counts against the first demand-sized pool it could have come from,
    -- at most the pool's sizing max per request: what the pool could ever hand out at once. A
    -- request the pool could never serve (100 VMs of a pool of max 10) counted all it asked
    -- for, so one caller's request made the pool's demand history ten times what any sizing
    -- could use, and its PredictedDemand graph with it.
    local missed, missed_order = {}, {}
    local function miss(pool)
      if pool_keys[pool].demand == nil then
        return false
      end
      if missed[pool] == nil then
        missed[pool] = 0
        missed_order[#missed_order + 1] = pool
      end
      missed[pool] = missed[pool] + 1
      return true
    end
    local unserved = {}
    for _, name in ipairs(short) do
      unserved[name] = true
    end
    for _, slot in ipairs(slots) do
      if unserved[slot.name] then
        local counted = false
        for _, pool in ipairs(slot.pools) do
          counted = miss(pool)
          if counted then
            break
          end
        end
        for _, pool in ipairs(slot.rest ~= nil and not counted and orders[slot.rest] or {}) do
          if miss(pool) then
            break
          end
        end
      end
    end
    for _, pool in ipairs(missed_order) do
      count_demand(pool, 'm', math.min(missed[pool], pool_keys[pool].demand_max or missed[pool]))
    end
  end
  return cjson.encode({ok = false, short = short})
end

local refusal = quota_refusal(checkout.quota, #slots, 0)
if refusal ~= nil then
  return cjson.encode({ok = false, quota = refusal})
end

-- Stamped on each VM taken (see move.lua): a pass whose inventory read began before this
-- checkout cannot drop the VM as "gone from the provider".
local change_seq = redis.call('GET', KEYS[checkout.changes]) or '0'
local confirm_window = nil
if checkout.confirm_window_ms ~= nil then
  local time = redis.call('TIME')
  confirm_window = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + checkout.confirm_window_ms
end
local result = {}
for index, slot in ipairs(slots) do
  local name, pool = slot.name, assigned[index]
  local popped = redis.call('ZPOPMIN', KEYS[pool_keys[pool].ready])
  local hostname = popped[1]
  redis.call('ZADD', KEYS[pool_keys[pool].running], now, hostname)
  redis.call('ZADD', KEYS[checkout.running], now, hostname) -- what the service's quota counts
  -- The next pass looks at it (its confirmation, migration, lifetime: Store.pool_snapshot_due).
  redis.call('ZADD', KEYS[pool_keys[pool].running_due], now, hostname)
  local vm_key = key_of(checkout.vm_template, hostname)
  redis.call('HSET', vm_key, 'state', 'running', 'checkout', now, 'change_seq', change_seq,
    'checkout_id', checkout.checkout_id, 'confirm_by', checkout.confirm_by)
  if confirm_window ~= nil then
    redis.call('HSET', vm_key, 'confirm_window', string.format('%d', confirm_window))
  end
  for field, value in pairs(checkout.fields) do
    redis.call('HSET', vm_key, field, value)
  end
  local taken = {name, pool, hostname}
  local dns_name, domain = unpack(redis.call('HMGET', vm_key, 'dns_name', 'domain'))
  if dns_name and dns_name ~= '' then
    taken[4] = domain or ''
  end
  result[#result + 1] = taken
  if checkout.quota ~= nil then
    quota_take(checkout.quota, 'vm:' .. hostname, 1)
    -- Whose holdings name it: a checkout never confirmed goes back to ready (release.lua), and
    -- leaves them then, or it would count for this owner while the next one holds it.
    redis.call('HSET', vm_key, 'holdings', KEYS[checkout.quota.key])
  end
end
local nudged = {}
for index = 1, #slots do
  local pool = assigned[index]
  if not nudged[pool] then
    nudged[pool] = 0
    local wake_key = KEYS[pool_keys[pool].wake]
    redis.call('LPUSH', wake_key, '1')
    redis.call('LTRIM', wake_key, 0, 0)
    redis.call('EXPIRE', wake_key, 60)
  end
  nudged[pool] = nudged[pool] + 1
end
for pool, count in pairs(nudged) do
  count_demand(pool, 'c', count)
end
return cjson.encode({ok = true, vms = result})
