-- Claim the start of the clones a pass reserved for an on-demand request, just before it asks the
-- provider for them: each VM still pending for the request, while the request is open, is marked
-- 'clone_claimed' and returned; the pass starts only those. A request ended in between
-- (lua/ondemand_end.lua) has dropped its unclaimed reservations, never to be cloned, and holds the
-- slots of the claimed ones until their clones end: the two scripts decide, one after the other,
-- whether a clone may still start.
-- KEYS[1] the request, then the VMs' records. ARGV: request id, now, then the VMs' hostnames (in
-- the order of their records).
-- Returns the hostnames claimed.
local id, now = ARGV[1], ARGV[2]
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then
  return {}
end
local claimed = {}
for i = 2, #KEYS do
  local vm = redis.call('HMGET', KEYS[i], 'state', 'request')
  if vm[1] == 'pending' and vm[2] == id then
    redis.call('HSET', KEYS[i], 'clone_claimed', now)
    claimed[#claimed + 1] = ARGV[i + 1]
  end
end
return claimed
