-- Update a token's 'last' only while it still exists: never resurrect a deleted token.
-- KEYS[1] the token's record; ARGV[1] now (ISO-8601). Returns 1 when updated.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last', ARGV[1])
  return 1
end
return 0
