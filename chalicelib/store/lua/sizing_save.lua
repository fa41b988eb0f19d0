-- Keep a demand-sized pool's sizing decision (sizing/controller.py) unless another pass saved one
-- since this pass read it: a pass that ran on a stale read (paused past its lease, or overlapping)
-- must not replace a newer decision; the stored one stands and is returned. Either way the day is
-- marked as one the service ran on, in the pool's demand history (sizing/demand.py).
-- KEYS[1] the sizing state hash, KEYS[2] the pool's demand hash of the day.
-- ARGV[1] pool, ARGV[2] the decision as this pass read it ('' when none), ARGV[3] the new
-- decision, ARGV[4] the seen field, ARGV[5] the history's ttl in seconds.
-- Returns {1, new} when saved, else {0, the stored decision}.
redis.call('HSET', KEYS[2], ARGV[4], '1')
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
local stored = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if stored ~= ARGV[2] then
  return {0, stored}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, ARGV[3]}
