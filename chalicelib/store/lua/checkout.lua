-- Check out VMs from several pools in one atomic step: all of them or none.
-- ARGV[1] key prefix, ARGV[2] now (epoch seconds), ARGV[3] JSON checkout:
--   {"requests": [{"name": "<as requested>", "pools": ["p1", "p2"], "count": 2}, ...],
--    "fields": {"lifetime": "24", "token_user": "..."},
--    "checkout_id": "<random>", "confirm_by": <epoch seconds>}
-- Returns JSON: {"ok": true, "vms": [[name, pool, hostname], ...]} or {"ok": false, "short": [names]}.
-- Each VM taken carries the checkout's id and stays unconfirmed (confirm_by) until the API, having
-- received this answer, confirms it (confirm.lua). A VM still unconfirmed at confirm_by was taken
-- by a request whose answer was lost: a reconcile pass returns it to ready (release.lua).
-- On success it also nudges each pool it took from (wake:<pool>), so the pool's reconcile starts
-- the replacement clones at once; a miss writes nothing at all.
local prefix, now = ARGV[1], ARGV[2]
local checkout = cjson.decode(ARGV[3])

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
  return cjson.encode({ok = false, short = short})
end

-- Stamped on each VM taken (see move.lua): a pass whose inventory read began before this
-- checkout cannot drop the VM as "gone from the provider".
local change_seq = redis.call('GET', prefix .. 'changes') or '0'
local result = {}
for _, step in ipairs(plan) do
  local name, pool = step[1], step[2]
  local popped = redis.call('ZPOPMIN', prefix .. 'pool:' .. pool .. ':ready')
  local hostname = popped[1]
  redis.call('ZADD', prefix .. 'pool:' .. pool .. ':running', now, hostname)
  local vm_key = prefix .. 'vm:' .. hostname
  redis.call('HSET', vm_key, 'state', 'running', 'checkout', now, 'change_seq', change_seq,
    'checkout_id', checkout.checkout_id, 'confirm_by', checkout.confirm_by)
  for field, value in pairs(checkout.fields) do
    redis.call('HSET', vm_key, field, value)
  end
  result[#result + 1] = {name, pool, hostname}
end
local nudged = {}
for _, step in ipairs(plan) do
  local pool = step[2]
  if not nudged[pool] then
    nudged[pool] = true
    local wake_key = prefix .. 'wake:' .. pool
    redis.call('LPUSH', wake_key, '1')
    redis.call('LTRIM', wake_key, 0, 0)
    redis.call('EXPIRE', wake_key, 60)
  end
end
return cjson.encode({ok = true, vms = result})
