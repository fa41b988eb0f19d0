-- Claim (or give back) the read of the names of every VM where a provider's pools live, after
-- Redis lost its data (manager/names.py): one pass reads them, the provider's other pools wait
-- for its names:known mark instead of each reading vCenter's whole inventory too.
-- KEYS[1] the claim (keys.names_reading), KEYS[2] the provider's mark (keys.names_known).
-- ARGV[1] 'claim' or 'release', ARGV[2] now (the service's clock, epoch seconds), ARGV[3] how
-- long a claim holds (a claimant killed mid-read is replaced after it), ARGV[4] the claimant's
-- token.
-- Returns 1 when the caller holds the claim now (claim) or gave it back (release), else 0 (the
-- mark is set: nothing to read; or another pass's claim holds).
local claim_key, known_key = KEYS[1], KEYS[2]
local mode, now, hold, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local current = redis.call('GET', claim_key)
if mode == 'release' then
  if current and string.sub(current, -(#token + 1)) == ' ' .. token then
    redis.call('DEL', claim_key)
    return 1
  end
  return 0
end
if redis.call('EXISTS', known_key) == 1 then
  return 0
end
if current then
  local claimed = tonumber(string.match(current, '^(%S+) '))
  if claimed ~= nil and claimed <= now and now - claimed < hold then
    return 0
  end
end
redis.call('SET', claim_key, ARGV[2] .. ' ' .. token, 'EX', math.ceil(hold) * 10)
return 1
