-- Hold the names a provider's read found (manager/names.py) and mark its names known, in one
-- step: a clone is never reserved under a name held (lua/reserve_clones.lua,
-- lua/ondemand_reserve.lua), and the provider's pools reserve word names again once the mark
-- is set.
-- KEYS[1] names:held, KEYS[2] the provider's mark (keys.names_known), KEYS[3] its claim
-- (keys.names_reading).
-- ARGV[1] now, ARGV[2] how long the held names are kept (seconds, from this write), ARGV[3]
-- '1' for the last call of the read (it sets the mark and drops the claim), then the names.
local held_key, known_key, claim_key = KEYS[1], KEYS[2], KEYS[3]
local now, keep, last = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local BATCH = 500 -- names per ZADD (unpack's limit)
for first = 4, #ARGV, BATCH do
  local members = {}
  for i = first, math.min(first + BATCH - 1, #ARGV) do
    members[#members + 1] = now
    members[#members + 1] = ARGV[i]
  end
  redis.call('ZADD', held_key, unpack(members))
end
if redis.call('EXISTS', held_key) == 1 then
  redis.call('EXPIRE', held_key, keep)
end
if last == '1' then
  redis.call('SET', known_key, now)
  redis.call('DEL', claim_key)
end
return 1
