-- Shared by checkout.lua and ondemand_create.lua (prepended to them when they are loaded).
-- What one owner (a token's user, or an anonymous client's address) holds, and whether a new
-- demand fits the limits. The owner's zset lists what it took: 'vm:<hostname>' (score 1) for a
-- checkout, 'od:<request id>' (score: VMs asked for) for an on-demand request. Entries that no
-- longer hold anything (a VM returned or destroyed, a request ended) are dropped while counting,
-- so no other script has to keep the set up to date.

-- VMs the owner holds now, and its open on-demand requests.
local function quota_held(quota, prefix)
  local held, open_requests = 0, 0
  local entries = redis.call('ZRANGE', quota.key, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local member, weight = entries[i], tonumber(entries[i + 1])
    local kind, name = string.sub(member, 1, 3), string.sub(member, 4)
    local live = 0
    if kind == 'vm:' then
      if redis.call('HGET', prefix .. 'vm:' .. name, 'state') == 'running' then
        live = 1
      end
    else
      local state = redis.call('HGET', prefix .. 'ondemand:' .. name, 'state')
      if state == 'open' then
        live = weight
        open_requests = open_requests + 1
      elseif state == 'ready' then
        for _, host in ipairs(redis.call('ZRANGE', prefix .. 'ondemand:' .. name .. ':vms', 0, -1)) do
          if redis.call('HGET', prefix .. 'vm:' .. host, 'state') == 'running' then
            live = live + 1
          end
        end
      end
    end
    if live == 0 then
      redis.call('ZREM', quota.key, member)
    else
      held = held + live
    end
  end
  return held, open_requests
end

-- Nil when 'vms' more VMs (and 'requests' more on-demand requests) fit; else which limit they
-- would pass: 'owner_vms', 'owner_requests', 'service_vms' or 'service_requests'.
local function quota_refusal(quota, prefix, vms, requests)
  if quota == nil then
    return nil
  end
  local held, open_requests = quota_held(quota, prefix)
  if held + vms > quota.max_owner_vms then
    return 'owner_vms'
  end
  if requests > 0 and open_requests + requests > quota.max_owner_requests then
    return 'owner_requests'
  end
  local running, queued = 0, 0
  for _, pool in ipairs(quota.pools) do
    running = running + redis.call('ZCARD', prefix .. 'pool:' .. pool .. ':running')
    if requests > 0 then
      queued = queued + redis.call('ZCARD', prefix .. 'ondemand:open:' .. pool)
    end
  end
  if running + vms > quota.max_vms then
    return 'service_vms'
  end
  if requests > 0 and queued + requests > quota.max_requests then
    return 'service_requests'
  end
  return nil
end

-- Record what the owner took ('vm:<host>' or 'od:<id>', weighing 'weight' VMs).
local function quota_take(quota, member, weight)
  if quota ~= nil then
    redis.call('ZADD', quota.key, weight, member)
    redis.call('EXPIRE', quota.key, quota.ttl)
  end
end

