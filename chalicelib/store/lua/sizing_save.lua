-- Keep a demand-sized pool's sizing decision (sizing/controller.py) unless another pass saved one
-- since this pass read it: a pass that ran on a stale read (paused past its lease, or overlapping)
-- must not replace a newer decision; the stored one stands and is returned.
-- KEYS[1] the sizing state hash. ARGV[1] pool, ARGV[2] the decision as this pass read it ('' when
-- none), ARGV[3] the new decision. Returns {1, new} when saved, else {0, the stored decision}.
local stored = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if stored ~= ARGV[2] then
  return {0, stored}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, ARGV[3]}
