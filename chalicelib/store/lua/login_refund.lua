-- Give a reserved login attempt back (auth/ratelimit.py).
-- KEYS: counters to give one reservation back to (a counter at 0 is deleted).
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 and redis.call('DECR', key) <= 0 then
    redis.call('DEL', key)
  end
end
return 1
