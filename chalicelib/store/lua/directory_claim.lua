-- Claim the question to the directory about a user whose last answer is due again
-- (auth/directory_check.py): one request asks, the others meanwhile go by that last answer, so a
-- user's many requests at once (a CI fleet) do not each bind to the directory when it gets old.
-- KEYS[1] the user's check record; ARGV[1] now (epoch seconds), ARGV[2] how long a claim holds
-- (seconds: a claimant killed mid-question is replaced after it), ARGV[3] the record's time to live,
-- ARGV[4] the record's 'asked' as the caller read it ('' for none).
-- Returns 1 when the caller has the claim (it asks), 0 when another request's claim holds, or when
-- an answer came since the caller read the record (answering drops the claim: a request that read
-- the old answer just before claimed and asked again).
if ARGV[4] ~= nil and (redis.call('HGET', KEYS[1], 'asked') or '') ~= ARGV[4] then
  return 0
end
local now, claimed = tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[1], 'claimed') or '')
if claimed ~= nil and claimed <= now and now - claimed < tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'claimed', ARGV[1])
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
