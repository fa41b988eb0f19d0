-- Shared by the scripts that open, count down and close on-demand requests (scripts.SHARED:
-- quota.lua's users, ondemand_deliver.lua, ondemand_end.lua, ondemand_reserve.lua): the service's
-- open requests (keys.ondemand_open_requests, score: the VMs each still waits for) and their sum
-- (keys.ondemand_open_waiting), kept with every change of a score, so a checkout reads one number
-- however many requests are open (quota.lua). Where the sum is missing (a new deployment, a key
-- lost) nothing is added to it: the next quota check counts it whole (open_waiting_count).
-- 'open' and 'waiting' are the indexes in KEYS of the two keys (a script touches only the keys
-- it is given).
-- The sum lives OPEN_WAITING_MS at most from its last whole count: a writer that changes the set
-- and not the sum (a release up to 60eceaa, still running during a deploy or after a rollback;
-- a hand edit) makes it drift for that long at most, then a checkout counts it whole again (one
-- read of the set a minute). Before, an earlier release's deliveries left the sum counting VMs
-- already running, and checkouts were refused at the service's limit until the next request.
local OPEN_WAITING_MS = 60000

-- What an entry counts: its score, never below none.
local function open_waits(score)
  return math.max(tonumber(score) or 0, 0)
end

local function open_waiting_add(waiting, change)
  if change ~= 0 and redis.call('EXISTS', KEYS[waiting]) == 1 then
    redis.call('INCRBY', KEYS[waiting], change)
  end
end

-- Open request 'id' waits for 'weight' VMs (added, or its score replaced).
local function open_request_set(open, waiting, id, weight)
  local before = redis.call('ZSCORE', KEYS[open], id)
  redis.call('ZADD', KEYS[open], weight, id)
  open_waiting_add(waiting, open_waits(weight) - open_waits(before))
end

-- Open request 'id' waits for 'delta' VMs more (a VM delivered: -1); nothing when not listed.
local function open_request_count(open, waiting, id, delta)
  local before = redis.call('ZSCORE', KEYS[open], id)
  if before then
    local after = redis.call('ZINCRBY', KEYS[open], delta, id)
    open_waiting_add(waiting, open_waits(after) - open_waits(before))
  end
end

-- Request 'id' is no longer open.
local function open_request_close(open, waiting, id)
  local before = redis.call('ZSCORE', KEYS[open], id)
  if before and redis.call('ZREM', KEYS[open], id) == 1 then
    open_waiting_add(waiting, -open_waits(before))
  end
end

-- The sum, just counted whole, lives OPEN_WAITING_MS at most, and no longer than the set.
local function open_waiting_counted(open, waiting)
  local ttl = redis.call('PTTL', KEYS[open])
  if ttl <= 0 or ttl > OPEN_WAITING_MS then
    ttl = OPEN_WAITING_MS
  end
  redis.call('PEXPIRE', KEYS[waiting], ttl)
end

-- Keep 'sum' as the sum (written only when it differs; its lifetime starts again).
local function open_waiting_keep(open, waiting, sum)
  if tonumber(redis.call('GET', KEYS[waiting]) or '') ~= sum then
    redis.call('SET', KEYS[waiting], sum)
  end
  open_waiting_counted(open, waiting)
  return sum
end

-- The sum counted whole from the set (every score read), and kept.
local function open_waiting_count(open, waiting)
  local sum = 0
  local entries = redis.call('ZRANGE', KEYS[open], 0, -1, 'WITHSCORES')
  for i = 2, #entries, 2 do
    sum = sum + open_waits(entries[i])
  end
  return open_waiting_keep(open, waiting, sum)
end
