-- Reserve a login attempt under every limit, or none (auth/ratelimit.py).
-- KEYS: counters; ARGV[1]: window seconds, ARGV[2..]: each counter's limit. When a counter has
-- reached its limit: nothing changes and the answer is its time left in ms. Otherwise every
-- counter is incremented (its window starts with its first attempt) and the answer is 0.
local wait = -1
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[i + 1]) then
    local left = redis.call('PTTL', key)
    if left < 0 then
      left = tonumber(ARGV[1]) * 1000
    end
    if left > wait then
      wait = left
    end
  end
end
if wait >= 0 then
  return wait
end
for _, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 or redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return 0
