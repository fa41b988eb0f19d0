-- A reserved login attempt has its answer (auth/ratelimit.py).
-- KEYS: as for login_reserve.lua (own counters, shared counters, their counts of attempts in
-- flight, tables, the attempt's key). The attempt's key says which counter of each limit counts
-- it, and is deleted: an attempt is settled once. Without it (an attempt older than its counts in
-- flight, or reserved without one), it was counted on its own counter when that one has attempts
-- in flight, else on the shared one when it has; an 'undo' then changes nothing: it is written
-- behind a reserve whose reply was lost (auth/ratelimit.py), which may have refused the attempt
-- and counted nothing, or never run.
-- ARGV[i]: what the answer means for limit i:
--   'failed'  the attempt stays counted (a wrong password);
--   'refund'  it is given back (a successful login; the directory was down). A success
--             forgets no failures: a counter holds those of every spelling auth/base.login_key
--             merges, and of every name sharing a counter, not only the one that logged in.
-- then ARGV[n + i]: limit i's name in its table (left when its counter is gone), then
-- ARGV[2n + 1]: 'answer' (the directory answered, or could not) or 'undo' (see KEYS).
-- In every case the attempt is no longer in flight. A count at 0 is deleted.
local n = (#KEYS - 1) / 5
local attempt = KEYS[#KEYS]
local counted_on = redis.call('GET', attempt)
if counted_on then
  redis.call('DEL', attempt)
elseif ARGV[2 * n + 1] == 'undo' then
  return 0
end
for i = 1, n do
  local counter, in_flight, own = KEYS[i], KEYS[2 * n + i], true
  local shared
  if counted_on then
    shared = string.sub(counted_on, i, i) == 's'
  else
    shared = redis.call('EXISTS', in_flight) == 0 and redis.call('EXISTS', KEYS[3 * n + i]) == 1
  end
  if shared then
    counter, in_flight, own = KEYS[n + i], KEYS[3 * n + i], false
  end
  if tonumber(redis.call('GET', in_flight) or '0') > 1 then
    redis.call('DECR', in_flight)
  else
    redis.call('DEL', in_flight)
  end
  if redis.call('EXISTS', counter) == 1 then
    if ARGV[i] == 'refund' then
      if redis.call('DECR', counter) <= 0 then
        redis.call('DEL', counter)
      end
    end
  end
  if own and redis.call('EXISTS', counter) == 0 then
    redis.call('ZREM', KEYS[4 * n + i], ARGV[n + i]) -- room for another
  end
end
return 1
