-- Claim the read of the names of every VM where a provider's pools live, after Redis lost its
-- data (manager/names.py): one pass reads them, the provider's other pools go on with random
-- names meanwhile instead of each reading vCenter's whole inventory too.
-- KEYS[1] the claim (keys.names_reading), KEYS[2] the provider's mark (keys.names_known).
-- ARGV[1] now (the service's clock, epoch seconds), ARGV[2] how long a claim holds (a claimant
-- killed mid-read, or whose read failed, is replaced after it), ARGV[3] the claimant's token,
-- ARGV[4] the deadline (ms of Redis's clock, '' none: store/deadline.py).
-- Returns 1 when the caller holds the claim now, else 0 (the mark is set: nothing to read; or
-- another pass's claim holds; or Redis ran it after the caller's socket timeout, a freeze: the
-- caller gave up and reads nothing, and its claim would keep every other pass from reading for
-- a claim's hold).
local claim_key, known_key = KEYS[1], KEYS[2]
local now, hold, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if past_deadline(ARGV[4]) or redis.call('EXISTS', known_key) == 1 then
  return 0
end
local current = redis.call('GET', claim_key)
if current then
  local claimed = tonumber(string.match(current, '^(%S+) '))
  -- Live within a hold either side of now: a pass that started before the claimant (its now
  -- older) but claims after it (its inventory read took longer) must not take the claim over
  -- and read again; one a whole hold ahead is a wrong clock's and would block for its expiry.
  if claimed ~= nil and math.abs(now - claimed) < hold then
    return 0
  end
end
redis.call('SET', claim_key, ARGV[1] .. ' ' .. token, 'EX', math.ceil(hold) * 10)
return 1
