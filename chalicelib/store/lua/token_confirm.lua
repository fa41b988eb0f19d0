-- Count a token lua/token_create.lua made (pending) against its user's max_tokens_per_user, once
-- a replica has it (auth/tokens.py): this script's answer is the only way to POST /token's 200.
-- Until it runs the token counts for nothing and is listed only to an administrator (GET
-- /token?user=, marked pending: KEYS[4]), so a login that dies after
-- token_create (its wait for a replica cut short, the process killed, Redis stalled past the
-- socket timeout) leaves no token counted against a user who never saw it.
-- KEYS[1] the token's record, KEYS[2] the user's set of token hashes, KEYS[3] the same hashes
-- scored by when each token was made (the user's token_times), KEYS[4] the user's pending tokens
-- (pending_tokens: the token leaves it, counted or deleted).
-- ARGV: the token's hash, when it was made (epoch seconds: its score), the cutoff (a token made
-- at or before it has expired; '-inf' without a ttl), most live tokens a user may have (0: no
-- limit), ttl seconds (0: none), the deadline (ms of Redis's clock, '' for none:
-- store/deadline.py) after which the API has answered 503.
-- Returns 1 counted (the token is the user's), 0 the token is gone (deleted, expired) or was
-- counted already, -1 the user has too many (logins at once: the token is deleted), -2 past the
-- deadline (nothing done: the API deletes the token).
if past_deadline(ARGV[6]) then
  return -2
end
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'pending') == 0 then
  return 0
end
local most = tonumber(ARGV[4])
if most > 0 and redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[3], '+inf') >= most then
  redis.call('DEL', KEYS[1])
  return -1
end
redis.call('HDEL', KEYS[1], 'pending')
if tonumber(ARGV[5]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
else
  redis.call('PERSIST', KEYS[1])
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
