-- Delete a token only when it belongs to the user (auth/tokens.py).
-- KEYS[1] the token's record, KEYS[2] the user's set of token hashes, KEYS[3] the same hashes by
-- when each was made (token_create.lua counts them), KEYS[4] the user's pending tokens
-- (pending_tokens: a pending token deleted leaves it here, not at the next listing or login);
-- ARGV[1] user, ARGV[2] hash.
-- Returns 1 deleted, 0 not found, -1 someone else's.
local owner = redis.call('HGET', KEYS[1], 'user')
if not owner then
  redis.call('SREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
  return 0
end
if owner ~= ARGV[1] then
  return -1
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
