-- Hold the names a provider's read found (manager/names.py) and mark its names known, in one
-- step: a clone is never reserved under a name held (lua/reserve_clones.lua,
-- lua/ondemand_reserve.lua), and the provider's pools reserve word names again once the mark
-- is set.
-- KEYS[1] names:held, KEYS[2] the provider's mark (keys.names_known), KEYS[3] its claim
-- (keys.names_reading).
-- ARGV[1] now, ARGV[2] how long the held names are kept (seconds, from this write), ARGV[3]
-- '1' for the last call of the read (it sets the mark and drops the claim), ARGV[4] the token
-- of the caller's claim (lua/names_claim.lua ARGV[3]), ARGV[5] the deadline (ms of Redis's
-- clock, '' none: store/deadline.py; the last call's only, store/names.py says why), then the
-- names.
-- The mark's value is the primary's replication id (INFO's master_replid; '-' where INFO does
-- not show it: then a failover goes unseen, as before).
-- Returns 1 when the names are held (and, for the last call, the mark set), else 0 and nothing
-- changed: Redis ran it after the caller's socket timeout (a freeze: the caller gave up and
-- said the names were not held), or the claim is not the caller's any more (it lapsed and
-- another pass claimed, or Redis lost its data again since the read). Either way the read may
-- be stale: a mark set from it would bring word names back while a VM Redis forgot since is
-- not held (a second VM of its name). The pass whose claim holds now reads again.
local held_key, known_key, claim_key = KEYS[1], KEYS[2], KEYS[3]
local now, keep, last, token = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if past_deadline(ARGV[5]) then
  return 0
end
local claim = redis.call('GET', claim_key)
if not claim or string.match(claim, '^%S+ (.*)$') ~= token then
  return 0
end
local BATCH = 500 -- names per ZADD (unpack's limit)
for first = 6, #ARGV, BATCH do
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
  -- The mark names the primary's replication id: a replica promoted since (a failover, which may
  -- have lost the records of the latest clones while the mark, older, survived) has another, and
  -- Store.begin_pass then drops the mark so the names are read again (store/names.py).
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  redis.call('SET', known_key, replid or '-')
  redis.call('DEL', claim_key)
end
return 1
