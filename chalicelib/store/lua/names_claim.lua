-- Claim the read of the names of every VM where a provider's pools live, after Redis lost its
-- data (manager/names.py): one pass reads them, the provider's other pools go on with random
-- names meanwhile instead of each reading vCenter's whole inventory too.
-- KEYS[1] the claim (keys.names_reading), KEYS[2] the provider's mark (keys.names_known).
-- ARGV[1] now (the service's clock, epoch seconds), ARGV[2] how long a claim holds (a claimant
-- killed mid-read, or whose read failed, is replaced after it), ARGV[3] the claimant's token.
-- Returns 1 when the caller holds the claim now, else 0 (the mark is set: nothing to read; or
-- another pass's claim holds).
local claim_key, known_key = KEYS[1], KEYS[2]
local now, hold, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if redis.call('EXISTS', known_key) == 1 then
  return 0
end
local current = redis.call('GET', claim_key)
if current then
  local claimed = tonumber(string.match(current, '^(%S+) '))
  if claimed ~= nil and claimed <= now and now - claimed < hold then
    return 0
  end
end
redis.call('SET', claim_key, ARGV[1] .. ' ' .. token, 'EX', math.ceil(hold) * 10)
return 1
