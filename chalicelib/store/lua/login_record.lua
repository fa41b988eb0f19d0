-- Count a failed login (auth/ratelimit.py).
-- KEYS: counters; ARGV[1]: window seconds. Increments each counter, starting its window on the
-- first failure, and returns the new counts. One script: atomic, no counter without an expiry.
local counts = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 or redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, ARGV[1])
  end
  counts[i] = count
end
return counts
