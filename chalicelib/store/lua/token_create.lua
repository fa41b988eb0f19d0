-- Create a token record unless the hash exists already; one step, so no half-made record
-- (auth/tokens.py).
-- KEYS[1] the new token's record, KEYS[2] the user's set of token hashes, KEYS[3..] the records of
-- the hashes the set held when the caller read it (only with a limit).
-- ARGV: user, now (ISO-8601), ttl seconds (0: none), the new hash, most live tokens a user may
-- have (0: no limit), then the hashes of KEYS[3..] in their order.
-- With a limit, the user's set forgets tokens that expired before they are counted. A hash added
-- after the caller read the set is a token just created: live, so nothing is missed.
-- Returns 1 created, 0 hash taken, -1 the user has too many.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local most = tonumber(ARGV[5])
if most > 0 then
  for i = 3, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      redis.call('SREM', KEYS[2], ARGV[i + 3])
    end
  end
  if redis.call('SCARD', KEYS[2]) >= most then
    return -1
  end
end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'created', ARGV[2], 'last', ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
redis.call('SADD', KEYS[2], ARGV[4])
return 1
