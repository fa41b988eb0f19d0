-- Check out VMs from several pools in one atomic step: all of them or none.
-- ARGV[1] key prefix, ARGV[2] now (epoch seconds), ARGV[3] JSON checkout:
--   {"requests": [{"name": "<as requested>", "pools": ["p1", "p2"], "count": 2}, ...],
--    "fields": {"lifetime": "24", "token_user": "..."},
--    "demand": {"prefix": "<demand key prefix>", "day": "YYYY-MM-DD", "minute": 541, "ttl": 777600,
--               "pools": {"p1": true}}}   (only when a requested pool has demand sizing)
-- Returns JSON: {"ok": true, "vms": [[name, pool, hostname], ...]} or {"ok": false, "short": [names]}.
-- On success it also nudges each pool it took from (wake:<pool>), so the pool's reconcile starts
-- the replacement clones at once. A miss writes nothing at all, except the demand count of a
-- demand-sized pool (its history must see the demand it could not serve).
local prefix, now = ARGV[1], ARGV[2]
local checkout = cjson.decode(ARGV[3])
local demand = checkout.demand

-- Count VMs checked out ('c') or asked for in vain ('m') in the pool's bucket for this minute.
local function count_demand(pool, kind, count)
  if demand == nil or demand.pools[pool] == nil then
    return false
  end
  local key = demand.prefix .. pool .. ':' .. demand.day
  redis.call('HINCRBY', key, kind .. demand.minute, count)
  redis.call('EXPIRE', key, demand.ttl)
  return true
end

local available = {}
local function ready_count(pool)
  if available[pool] == nil then
    available[pool] = redis.call('ZCARD', prefix .. 'pool:' .. pool .. ':ready')
  end
  return available[pool]
end

-- Plan first, without writing anything, so that a miss leaves Redis untouched.
local plan, short = {}, {}
for _, request in ipairs(checkout.requests) do
  for _ = 1, request.count do
    local chosen = nil
    for _, pool in ipairs(request.pools) do
      if ready_count(pool) > 0 then
        chosen = pool
        break
      end
    end
    if chosen == nil then
      short[#short + 1] = request.name
      break
    end
    available[chosen] = available[chosen] - 1
    plan[#plan + 1] = {request.name, chosen}
  end
end
if #short > 0 then
  if demand ~= nil then
    -- Each unserved request counts against the first demand-sized pool it could have come from.
    local unserved = {}
    for _, name in ipairs(short) do
      unserved[name] = true
    end
    for _, request in ipairs(checkout.requests) do
      if unserved[request.name] then
        for _, pool in ipairs(request.pools) do
          if count_demand(pool, 'm', request.count) then
            break
          end
        end
      end
    end
  end
  return cjson.encode({ok = false, short = short})
end

local result = {}
for _, step in ipairs(plan) do
  local name, pool = step[1], step[2]
  local popped = redis.call('ZPOPMIN', prefix .. 'pool:' .. pool .. ':ready')
  local hostname = popped[1]
  redis.call('ZADD', prefix .. 'pool:' .. pool .. ':running', now, hostname)
  local vm_key = prefix .. 'vm:' .. hostname
  redis.call('HSET', vm_key, 'state', 'running', 'checkout', now)
  for field, value in pairs(checkout.fields) do
    redis.call('HSET', vm_key, field, value)
  end
  result[#result + 1] = {name, pool, hostname}
end
local nudged = {}
for _, step in ipairs(plan) do
  local pool = step[2]
  if not nudged[pool] then
    nudged[pool] = 0
    local wake_key = prefix .. 'wake:' .. pool
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
