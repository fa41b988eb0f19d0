-- Add duration samples to a day's statistics: count, total, min and max, overall and per pool.
-- KEYS[1] the day's hash; ARGV: ttl_seconds, then triples kind, pool, seconds.
local key, ttl = KEYS[1], tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  local kind, pool, seconds = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  for _, scope in ipairs({kind, kind .. ':pool:' .. pool}) do
    redis.call('HINCRBY', key, scope .. ':count', 1)
    redis.call('HINCRBYFLOAT', key, scope .. ':total', seconds)
    local low = tonumber(redis.call('HGET', key, scope .. ':min'))
    if low == nil or seconds < low then
      redis.call('HSET', key, scope .. ':min', seconds)
    end
    local high = tonumber(redis.call('HGET', key, scope .. ':max'))
    if high == nil or seconds > high then
      redis.call('HSET', key, scope .. ':max', seconds)
    end
  end
end
redis.call('EXPIRE', key, ttl)
return 1
