-- Count one request in a fixed window that starts with the window's first request.
-- A client is counted on its own while its class's table of such clients has room; past it, a
-- client not counted on its own already is counted on a shared counter (one of a fixed number),
-- so what the class keeps is bounded whatever its window and however many clients there are,
-- and no client counted on its own is reset or refused for others' requests (api/limits.py).
-- KEYS[1] the client's own counter, KEYS[2] the shared counter it falls back to, KEYS[3] the
-- class's table: clients counted on their own -> when their window ends (the service's clock).
-- ARGV[1] the window in seconds, ARGV[2] now (seconds), ARGV[3] the most clients the table
-- holds, ARGV[4] the client (its name in the table).
-- Returns {count in the window, ms left in the window, 1 when counted on the shared counter}.
local window, now, most, client = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local key, shared = KEYS[1], 0
if redis.call('EXISTS', key) == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) -- their windows ended
  if not redis.call('ZSCORE', KEYS[3], client) and redis.call('ZCARD', KEYS[3]) >= most then
    key, shared = KEYS[2], 1
  else
    redis.call('ZADD', KEYS[3], now + window, client)
    redis.call('EXPIRE', KEYS[3], window) -- no entry outlives the newest window
  end
end
local count = redis.call('INCR', key)
if count == 1 or redis.call('PTTL', key) < 0 then
  redis.call('EXPIRE', key, window)
end
return {count, redis.call('PTTL', key), shared}
