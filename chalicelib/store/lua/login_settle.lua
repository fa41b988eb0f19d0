-- A reserved login attempt has its answer (auth/ratelimit.py).
-- KEYS: n counters, then each one's count of attempts in flight (as for login_reserve.lua).
-- ARGV[i]: what the answer means for counter i:
--   'failed'  the attempt stays counted (a wrong password);
--   'refund'  it is given back (the directory was down; the address of a successful login);
--   'clear'   the user logged in: its failures are forgotten, but attempts still in flight stay
--             reserved (each may yet be a wrong guess).
-- In every case the attempt is no longer in flight. A count at 0 is deleted.
local n = #KEYS / 2
for i = 1, n do
  local counter, in_flight = KEYS[i], KEYS[n + i]
  local flying = tonumber(redis.call('GET', in_flight) or '0') - 1
  if flying > 0 then
    redis.call('DECR', in_flight)
  else
    flying = 0
    redis.call('DEL', in_flight)
  end
  if redis.call('EXISTS', counter) == 1 then
    if ARGV[i] == 'refund' then
      if redis.call('DECR', counter) <= 0 then
        redis.call('DEL', counter)
      end
    elseif ARGV[i] == 'clear' then
      local keep = math.min(flying, tonumber(redis.call('GET', counter)))
      local left = redis.call('PTTL', counter)
      if keep > 0 and left > 0 then
        redis.call('SET', counter, keep, 'PX', left)
      else
        redis.call('DEL', counter)
      end
    end
  end
end
return 1
