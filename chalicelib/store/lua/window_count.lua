-- Count one event in a fixed window that starts with the window's first event (the API's
-- changes of a pool: store/fleet.py count_nudges).
-- KEYS[1] the counter; ARGV[1] the window in seconds.
-- Returns {count in the window, ms left in the window}.
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('PTTL', KEYS[1])}
