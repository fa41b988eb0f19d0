-- Update a token's 'last' only while it still exists: never resurrect a deleted token. Its expiry
-- follows the token_ttl in effect now (auth/tokens.py: a token_ttl raised, lowered or removed
-- since the token was made applies to it).
-- KEYS[1] the token's record; ARGV[1] now (ISO-8601), ARGV[2] seconds until the token expires
-- ('0': it does not). Returns 1 when updated.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last', ARGV[1])
  if tonumber(ARGV[2]) > 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
  else
    redis.call('PERSIST', KEYS[1])
  end
  return 1
end
return 0
