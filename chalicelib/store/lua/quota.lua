-- Shared by checkout.lua and ondemand_create.lua (prepended to them when they are loaded).
-- What one owner (a token's user, or an anonymous client's address) holds, and whether a new
-- demand fits the limits. The owner's zset lists what it took: 'vm:<hostname>' (score 1) for a
-- checkout, 'od:<request id>' (score: VMs asked for) for an on-demand request. Entries that no
-- longer hold anything (a VM returned or destroyed, a request ended) are dropped while counting
-- (quota_held: only once the owner's bound nears a limit, see quota_refusal), so no other script
-- has to keep the set up to date.
-- The quota (JSON) names its keys by their KEYS index: 'key' the owner's holdings set, 'holders'
-- the service's set of owners' hashes with a holdings set (by when each last took something), 'running'
-- the service's running set (every pool's running VMs, kept by the scripts that move VMs: one
-- ZCARD however many pools there are), 'counted' the mark running_recount.lua sets when it builds
-- that set, 'open_requests' every open request (score: VMs asked for), 'open_waiting' their sum
-- (lua/open_waiting.lua); and
-- holds the owner's hash ('owner_hash'), 'now', how many owners' sets the service keeps before it
-- looks for ones holding nothing ('max_holders'), the template of an owner's holdings set
-- ('holdings_template'), and the templates of what a holdings entry names: 'vm_template' a VM's record,
-- 'request_template' a request, 'request_vms_template' a request's VMs (keys.DERIVED_KEYS).
-- The service's limits count requests, not pools a request needs, and the VMs open requests
-- will hold besides the running ones: a request's VMs run once built, so a limit that left
-- them out was passed by as many VMs as open requests asked for.

-- Whether a checkout's VM or a request, unconfirmed, can no longer be confirmed: its
-- 'confirm_window' (Redis's clock, ms; lua/confirm.lua, lua/ondemand_confirm.lua) has passed.
-- Its API gave up on it and answered 503, so its caller, who asks again, holds nothing by it: the
-- VM goes back to ready at its deadline, the request fails there. Within the window it counts (a
-- confirmation may still come), so requests sent together cannot pass a limit together.
-- 'now_ms' is a table caching Redis's clock for one count.
local function quota_lapsed(window, now_ms)
  window = tonumber(window or '')
  if window == nil then
    return false
  end
  if now_ms.value == nil then
    local time = redis.call('TIME')
    now_ms.value = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  end
  return now_ms.value > window
end

-- How many VMs of the on-demand request 'id' run for it: the records under the names of its VM
-- set (templates: keys.DERIVED_KEYS) that are running and name the request. A name is given out
-- again once a destroyed VM's record is gone (data_ttl; a ready request is kept 30 days), so a
-- record under it may be another caller's VM: counted, it charged the request's owner for it and
-- kept the request from the bound on kept requests (lua/ondemand_create.lua) while it ran.
local function request_vms_running(id, request_vms_template, vm_template)
  local running = 0
  for _, host in ipairs(redis.call('ZRANGE', key_of(request_vms_template, request_part(id)), 0, -1)) do
    local vm = redis.call('HMGET', key_of(vm_template, host), 'state', 'request')
    if vm[1] == 'running' and vm[2] == id then
      running = running + 1
    end
  end
  return running
end

-- VMs the owner holds now, and its open on-demand requests; or those of the owner whose hash is
-- 'owner' (lua/holders_sweep.lua, which gives only the templates). An unconfirmed checkout or
-- request past its confirmation window holds nothing (quota_lapsed).
local function quota_held(quota, owner)
  local held, open_requests = 0, 0
  local now_ms = {}
  local holdings_key = KEYS[quota.key]
  if owner ~= nil then
    holdings_key = key_of(quota.holdings_template, owner)
  end
  local entries = redis.call('ZRANGE', holdings_key, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local member, weight = entries[i], tonumber(entries[i + 1])
    local kind, name = string.sub(member, 1, 3), string.sub(member, 4)
    local live = 0
    -- What an entry names may since be another owner's: a VM's name, or a request id a client
    -- chose, is given out again once its record is gone (a VM's after data_ttl: one of 900 word
    -- names). It counts only while its record names this holdings set ('holdings', set as it was
    -- taken); one without (taken before that field was written) counts as before, but for a VM of
    -- an on-demand request, which no checkout's entry names.
    if kind == 'vm:' then
      local vm = redis.call('HMGET', key_of(quota.vm_template, name), 'state', 'holdings', 'request',
        'confirm_window')
      if vm[1] == 'running' and (vm[2] == holdings_key or (not vm[2] and not vm[3]))
          and not quota_lapsed(vm[4], now_ms) then
        live = 1
      end
    else
      local request = redis.call('HMGET', key_of(quota.request_template, request_part(name)), 'state', 'holdings',
        'confirm_window')
      local state = request[1]
      if (request[2] and request[2] ~= holdings_key) or quota_lapsed(request[3], now_ms) then
        state = nil
      end
      if state == 'open' then
        live = weight
        open_requests = open_requests + 1
      elseif state == 'ready' then
        live = request_vms_running(name, quota.request_vms_template, quota.vm_template)
      end
    end
    if live == 0 then
      redis.call('ZREM', holdings_key, member)
    else
      held = held + live
    end
  end
  return held, open_requests
end

-- At least what quota_held counts (VMs, open requests), read without looking at what the entries
-- name: a few commands however much the owner holds, where quota_held reads a record per entry.
-- An entry holds at most its score: a VM's is 1; a request's the VMs it asked for, those to come
-- while it is open, and when it is ready no more than were delivered (ondemand_reserve.lua builds
-- only what a request lacks, and ondemand_deliver.lua delivers only to an open one). An entry
-- scored 1 or less counts 1; only requests for more than one VM are read, with their scores. Open
-- requests are at most the 'od:' entries: the set's size, or, when that is too many, its names
-- counted (one command, no record read).
local function quota_bound(quota, requests)
  local holdings_key = KEYS[quota.key]
  local held = redis.call('ZCOUNT', holdings_key, '-inf', 1)
  local open_requests = held
  local larger = redis.call('ZRANGEBYSCORE', holdings_key, '(1', '+inf', 'WITHSCORES')
  for i = 2, #larger, 2 do
    held = held + tonumber(larger[i])
    open_requests = open_requests + 1
  end
  if requests > 0 and open_requests + requests > quota.max_owner_requests then
    open_requests = 0
    for _, member in ipairs(redis.call('ZRANGE', holdings_key, 0, -1)) do
      if string.sub(member, 1, 3) == 'od:' then
        open_requests = open_requests + 1
      end
    end
  end
  return held, open_requests
end

-- Which of the owner's limits 'vms' more VMs and 'requests' more requests would pass, given
-- what it holds: 'owner_vms', 'owner_requests' or nil.
local function owner_refusal(quota, held, open_requests, vms, requests)
  if held + vms > quota.max_owner_vms then
    return 'owner_vms'
  end
  if requests > 0 and open_requests + requests > quota.max_owner_requests then
    return 'owner_requests'
  end
  return nil
end

-- Nil when 'vms' more VMs (and 'requests' more on-demand requests) fit; else which limit they
-- would pass: 'owner_vms', 'owner_requests', 'service_vms' or 'service_requests'; or 'recount'
-- when the service's running set is not known to be whole (never built, or lost with its mark):
-- the caller rebuilds it (running_recount.lua) and asks again, nothing having been taken.
-- The owner's limits are met without counting when its bound fits them (quota_bound); only an
-- owner whose bound reaches a limit is counted, which drops its dead entries: they add up until
-- then (the set holds at most about max_owner_vms entries, as before: each counts at least 1), and
-- one count drops them all, so what counting costs is spread over the takes that added them.
local function quota_refusal(quota, vms, requests)
  if quota == nil then
    return nil
  end
  local held, open_requests = quota_bound(quota, requests)
  if owner_refusal(quota, held, open_requests, vms, requests) then
    held, open_requests = quota_held(quota)
    local refusal = owner_refusal(quota, held, open_requests, vms, requests)
    if refusal then
      return refusal
    end
  end
  if redis.call('EXISTS', KEYS[quota.counted]) == 0 then
    return 'recount'
  end
  local running, queued = redis.call('ZCARD', KEYS[quota.running]), 0
  -- Open requests, each once, scored by the VMs each still waits for (ondemand_deliver.lua
  -- counts a delivered VM down: it is running now; it and ondemand_end.lua remove a request that
  -- is no longer open), and their sum (lua/open_waiting.lua). A checkout reads the sum only (one
  -- GET however many requests are open; it counted every score before: 1,000 open requests cost
  -- each checkout a 1,000-entry read); an on-demand request reads every entry, drops any whose
  -- request is not open (its record expired unserved), as holdings entries are above, and keeps
  -- the sum it counted (so any drift lasts until the next on-demand request at most). A request
  -- whose answer was lost, past its confirmation window (quota_lapsed), counts in neither limit
  -- of an on-demand request (it stays in the kept sum until a pass fails it: a checkout counts it
  -- until then).
  local open_key = KEYS[quota.open_requests]
  if requests > 0 then
    local waiting, lapsed, now_ms = 0, 0, {}
    local open = redis.call('ZRANGE', open_key, 0, -1, 'WITHSCORES')
    for i = 1, #open, 2 do
      local request = redis.call('HMGET', key_of(quota.request_template, request_part(open[i])), 'state',
        'confirm_window')
      if request[1] ~= 'open' then
        redis.call('ZREM', open_key, open[i])
      else
        waiting = waiting + open_waits(open[i + 1])
        if quota_lapsed(request[2], now_ms) then
          lapsed = lapsed + open_waits(open[i + 1])
        else
          queued = queued + 1
        end
      end
    end
    running = running + open_waiting_keep(quota.open_requests, quota.open_waiting, waiting) - lapsed
  else
    local waiting = tonumber(redis.call('GET', KEYS[quota.open_waiting]) or '')
    running = running + (waiting or open_waiting_count(quota.open_requests, quota.open_waiting))
  end
  if running + vms > quota.max_vms then
    return 'service_vms'
  end
  if requests > 0 and queued + requests > quota.max_requests then
    return 'service_requests'
  end
  return nil
end

-- An owner's holdings set outlives what it holds (its entries are dropped only as the owner
-- counts them again), and a caller with many addresses is many owners: each address that took one
-- VM and returned it left a set for the sets' ttl (400 days). A take lists its owner in 'holders'
-- (by when it last took something); the scheduler's tick sweeps the owners listed longest ago past
-- 'max_holders' (lua/holders_sweep.lua), so what a take costs never depends on other owners' sets
-- (it swept two of them, each a record read per entry: 437 commands against 30 for a new owner's
-- checkout, with 100 dead entries each).
local function quota_list_holder(quota)
  redis.call('ZADD', KEYS[quota.holders], quota.now, quota.owner_hash)
  redis.call('EXPIRE', KEYS[quota.holders], quota.ttl)
end

-- Record what the owner took ('vm:<host>' or 'od:<id>', weighing 'weight' VMs).
local function quota_take(quota, member, weight)
  if quota ~= nil then
    redis.call('ZADD', KEYS[quota.key], weight, member)
    redis.call('EXPIRE', KEYS[quota.key], quota.ttl)
    quota_list_holder(quota)
  end
end

-- Record a new open request (asking for 'weight' VMs): the owner's, and the service's.
local function quota_take_request(quota, id, weight)
  if quota ~= nil then
    quota_take(quota, 'od:' .. id, weight)
    open_request_set(quota.open_requests, quota.open_waiting, id, weight)
    redis.call('EXPIRE', KEYS[quota.open_requests], quota.ttl)
    open_waiting_counted(quota.open_requests, quota.open_waiting)  -- counted whole by quota_refusal
  end
end

