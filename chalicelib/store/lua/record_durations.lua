-- Add duration samples to a day's statistics: count, total, min and max, overall and per pool.
-- KEYS[1] the day's hash; ARGV: ttl_seconds, then triples kind, pool, seconds.
-- The samples' counts, minima and maxima are gathered here first, so a call costs one HMGET and
-- one HSET for them whatever the number of samples (per 500 scopes). Totals stay one HINCRBYFLOAT per sample and
-- scope, in the samples' order: Redis adds and rounds in its own long double arithmetic, and a
-- sum made here would differ in the last digits, enough to flip a rounded average (/summary).
-- A figure that is not a finite number (text, nan, inf written into Redis by hand) starts again
-- from these samples: otherwise HINCRBYFLOAT would fail every pass that records a duration.
local key, ttl = KEYS[1], tonumber(ARGV[1])

local function finite(value)
  local number = tonumber(value)
  if number == nil or number ~= number or number == math.huge or number == -math.huge then
    return nil
  end
  return number
end

local scopes, order = {}, {}
for i = 2, #ARGV, 3 do
  local kind, pool, seconds = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  for _, scope in ipairs({kind, kind .. ':pool:' .. pool}) do
    local added = redis.pcall('HINCRBYFLOAT', key, scope .. ':total', seconds)
    if type(added) == 'table' and added.err then
      redis.call('HSET', key, scope .. ':total', seconds)
    end
    local batch = scopes[scope]
    if batch == nil then
      scopes[scope] = {count = 1, low = seconds, high = seconds}
      order[#order + 1] = scope
    else
      batch.count = batch.count + 1
      batch.low = math.min(batch.low, seconds)
      batch.high = math.max(batch.high, seconds)
    end
  end
end
-- Scopes are read and written SCOPES_PER_CALL at a time: Lua's unpack takes a few thousand
-- values at most, and one call may carry the samples of many pools.
local SCOPES_PER_CALL = 500
for first = 1, #order, SCOPES_PER_CALL do
  local chunk, names = {}, {}
  for index = first, math.min(first + SCOPES_PER_CALL - 1, #order) do
    chunk[#chunk + 1] = order[index]
    names[#names + 1] = order[index] .. ':count'
    names[#names + 1] = order[index] .. ':min'
    names[#names + 1] = order[index] .. ':max'
  end
  local current = redis.call('HMGET', key, unpack(names))
  local changes = {}
  for index, scope in ipairs(chunk) do
    local batch = scopes[scope]
    local count, low, high = finite(current[index * 3 - 2]), finite(current[index * 3 - 1]),
      finite(current[index * 3])
    changes[#changes + 1] = names[index * 3 - 2]
    changes[#changes + 1] = string.format('%d', (count or 0) + batch.count)
    if low == nil or batch.low < low then
      changes[#changes + 1] = names[index * 3 - 1]
      changes[#changes + 1] = batch.low
    end
    if high == nil or batch.high > high then
      changes[#changes + 1] = names[index * 3]
      changes[#changes + 1] = batch.high
    end
  end
  redis.call('HSET', key, unpack(changes))
end
redis.call('EXPIRE', key, ttl)
return 1
