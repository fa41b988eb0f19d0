-- Reserve a login attempt under every limit, or none (auth/ratelimit.py).
-- KEYS: n counters (failed logins and attempts in flight), then each one's count of attempts in
-- flight, in the same order. ARGV[1]: window seconds, ARGV[2]: seconds a count of attempts in
-- flight lives (longer than any login takes), ARGV[3..]: each counter's limit.
-- A counter at its limit refuses the attempt, nothing changes, and the answer says why: its time
-- left in ms (> 0) when its failures alone reach the limit, -1 when attempts still in flight do
-- (they may all succeed: worth trying again in a moment). Otherwise every counter and every count
-- in flight is incremented (a counter's window starts with its first attempt) and the answer is 0.
local n = #KEYS / 2
local wait, busy = 0, false
for i = 1, n do
  local limit = tonumber(ARGV[i + 2])
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count >= limit then
    local flying = tonumber(redis.call('GET', KEYS[n + i]) or '0')
    if count - flying >= limit then
      local left = redis.call('PTTL', KEYS[i])
      if left <= 0 then
        left = tonumber(ARGV[1]) * 1000
      end
      if left > wait then
        wait = left
      end
    else
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
for i = 1, n do
  local count = redis.call('INCR', KEYS[i])
  if count == 1 or redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], ARGV[1])
  end
  redis.call('INCR', KEYS[n + i])
  redis.call('EXPIRE', KEYS[n + i], ARGV[2])
end
return 0
