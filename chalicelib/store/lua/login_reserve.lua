-- Reserve a login attempt under every limit, or none (auth/ratelimit.py).
-- Each limit (the user name's, the address's) has its own counter while its kind's table of
-- counters has room: past it, a name or address not counted already is counted on a counter it
-- shares (one of a fixed number), so what failed logins keep is bounded whatever the window and
-- however many names and addresses callers try; no counter counted before is reset or spent.
-- The tables are judged on Redis's clock, the one that expires the counters: each entry ends at
-- the very millisecond its counter expires, so an entry leaves its table only once its counter
-- is gone. On the service's clock, one running ahead of Redis's emptied a table while the
-- counters lived on, and a kind counted more than the most on their own (as lua/rate_count.lua).
-- KEYS: for n limits, their own counters, their shared counters, the counts of attempts in flight
-- of each (own, then shared), and their kinds' tables (name or address -> when its window ends,
-- ms, Redis's clock).
-- ARGV[1]: window seconds, ARGV[2]: seconds a count of attempts in flight lives (longer than any
-- login takes), ARGV[3]: the most counters a table holds, then each limit, then each one's name
-- in its table, then each one's room for attempts in flight past the limit.
-- KEYS last: the attempt's own key (login:attempt:<id>), which an attempt counted keeps for as
-- long as its counts in flight live: which counter of each limit counts it ('o' its own, 's' the
-- shared one), read by login_settle.lua to change exactly those.
-- A counter whose failures alone (its count less its attempts in flight) reach its limit refuses
-- the attempt with its time left in ms (> 0); one whose count reaches its limit plus its room for
-- attempts in flight refuses it with -1 (they may all succeed: worth trying again in a moment). A
-- refusal changes no count. Otherwise every counter and every count
-- in flight is incremented (a counter's window starts with its first attempt) and the answer is 0.
local n = (#KEYS - 1) / 5
local attempt = KEYS[#KEYS]
local window, most = tonumber(ARGV[1]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ends = now + window * 1000
local counter, flight, new = {}, {}, {} -- the index in KEYS of each limit's counter and count in flight
for i = 1, n do
  local tbl, name = KEYS[4 * n + i], ARGV[3 + n + i]
  counter[i], flight[i] = i, 2 * n + i
  if redis.call('EXISTS', KEYS[i]) == 0 then
    -- Their windows ended and their counters expired: a millisecond's margin, as the expiries
    -- are judged at the time the script started, a moment before TIME.
    redis.call('ZREMRANGEBYSCORE', tbl, '-inf', '(' .. (now - 1))
    if redis.call('ZSCORE', tbl, name) or redis.call('ZCARD', tbl) < most then
      new[i] = true
    else
      counter[i], flight[i] = n + i, 3 * n + i
    end
  end
end
local wait, busy = 0, false
for i = 1, n do
  local limit, room = tonumber(ARGV[3 + i]), tonumber(ARGV[3 + 2 * n + i])
  local count = tonumber(redis.call('GET', KEYS[counter[i]]) or '0')
  if count >= limit then
    local flying = tonumber(redis.call('GET', KEYS[flight[i]]) or '0')
    if count - flying >= limit then
      local left = redis.call('PTTL', KEYS[counter[i]])
      if left <= 0 then
        left = window * 1000
      end
      if left > wait then
        wait = left
      end
    elseif count >= limit + room then
      busy = true
    end
  end
end
if wait > 0 then
  return wait
end
if busy then
  return -1
end
local counted_on = {}
for i = 1, n do
  counted_on[i] = counter[i] == i and 'o' or 's'
  local count = redis.call('INCR', KEYS[counter[i]])
  if count == 1 or redis.call('PTTL', KEYS[counter[i]]) < 0 then
    redis.call('PEXPIREAT', KEYS[counter[i]], ends)
  end
  redis.call('INCR', KEYS[flight[i]])
  redis.call('EXPIRE', KEYS[flight[i]], ARGV[2])
  if new[i] then
    local tbl = KEYS[4 * n + i]
    redis.call('ZADD', tbl, ends, ARGV[3 + n + i])
    redis.call('PEXPIREAT', tbl, ends) -- no entry outlives the newest window
  end
end
redis.call('SET', attempt, table.concat(counted_on), 'EX', ARGV[2])
return 0
