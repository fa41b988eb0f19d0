-- Count one request in a fixed window that starts with the window's first request.
-- A client is counted on its own while its class's table of such clients has room; past it, a
-- client not counted on its own already is counted on a shared counter (one of a fixed number),
-- so what the class keeps is bounded whatever its window and however many clients there are,
-- and no client counted on its own is reset or refused for others' requests (api/limits.py).
-- The table is judged on Redis's clock, the one that expires the counters: each entry ends at
-- the very millisecond its counter expires, so an entry leaves the table only once its counter
-- is gone. On the service's clock, one running ahead of Redis's emptied the table while the
-- counters lived on, and the class counted more than the most on their own.
-- KEYS[1] the client's own counter, KEYS[2] the shared counter it falls back to, KEYS[3] the
-- class's table: clients counted on their own -> when their window ends (ms, Redis's clock).
-- ARGV[1] the window in seconds, ARGV[2] the most clients the table holds, ARGV[3] the client
-- (its name in the table).
-- Returns {count in the window, ms left in the window, 1 when counted on the shared counter}.
local window, most, client = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ends = now + window * 1000
local key, shared = KEYS[1], 0
if redis.call('EXISTS', key) == 0 then
  -- Their windows ended and their counters expired: a millisecond's margin, as the expiries
  -- are judged at the time the script started, a moment before TIME.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - 1))
  if not redis.call('ZSCORE', KEYS[3], client) and redis.call('ZCARD', KEYS[3]) >= most then
    key, shared = KEYS[2], 1
  else
    redis.call('ZADD', KEYS[3], ends, client)
    -- The table lasts as long as its longest window, not the newest: after a push lowering the
    -- period, a client of the short window made it expire while the long windows' counters
    -- lived on, and the class counted more than the most on their own.
    local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
    redis.call('PEXPIREAT', KEYS[3], last[2])
  end
end
local count = redis.call('INCR', key)
if count == 1 or redis.call('PTTL', key) < 0 then
  redis.call('PEXPIREAT', key, ends)
end
return {count, redis.call('PTTL', key), shared}
