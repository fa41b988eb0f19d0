-- Create a token record unless the hash exists already, refused when the user has their most live
-- tokens (counted in the same step). The record is made pending: it counts for nothing and is
-- listed nowhere until lua/token_confirm.lua counts it (a replica has it, the API is about to
-- answer 200; that script checks the limit again, so creations at once pass no limit); a login
-- that dies in between leaves no token counted against a user who never saw it (auth/tokens.py).
-- KEYS[1] the new token's record, KEYS[2] the user's set of token hashes, KEYS[3] the same hashes
-- scored by when each token was made (the user's token_times), KEYS[4] the user's pending tokens
-- (pending_tokens, by when each was made: an administrator lists them; lua/token_confirm.lua
-- takes a token out as it counts it), KEYS[5] the login's settled mark (store/settle.py: once
-- marked, the API, this script's answer lost, found no token made and answered 503: nothing is
-- made; the token's record is what shows it made).
-- ARGV: user, now (ISO-8601), seconds the pending record lives (lua/token_confirm.lua sets the
-- ttl's), the new hash, most live tokens a user may have (0: no limit), when the new token is made
-- (epoch seconds: its score in pending_tokens, and lua/token_confirm.lua's in token_times), the cutoff (a token made at or before it
-- has expired; '-inf' without a ttl), the template of a token's record (keys.token(KEY_PART)),
-- the deadline (ms of Redis's clock, '' for none: store/deadline.py) after which the API has
-- given up on this answer and said the login failed (503), the stable id of the user's directory entry ('' for none); then, only when the caller
-- was asked to (-2), 'read' and the user's live tokens it read: hash, score, hash, score...
-- The count is of token_times past the cutoff: O(log n) whatever the limit, the records unread.
-- Both sets name the same hashes (every script that changes one changes the other); when their
-- sizes differ (tokens made before token_times existed, or by an older version) the caller is
-- asked for the user's live tokens and token_times is built from them.
-- Returns 1 created, 0 hash taken, -1 the user has too many, -2 token_times must be built, -3 the
-- script reached Redis past its deadline (paused, behind a slow script) or after the API settled
-- it as not made: its caller was answered 503, and a token made now would be one nobody ever
-- sees, counted against the user's limit.
local FORGET_AT_ONCE = 100  -- expired tokens forgotten per call: bounded work, faster than they come
if past_deadline(ARGV[9]) or redis.call('EXISTS', KEYS[5]) == 1 then
  return -3
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local hashes, times = KEYS[2], KEYS[3]
local cutoff = ARGV[7]
if redis.call('SCARD', hashes) ~= redis.call('ZCARD', times) then
  if ARGV[11] ~= 'read' then
    return -2
  end
  redis.call('DEL', times)
  for i = 12, #ARGV, 2 do
    if redis.call('EXISTS', key_of(ARGV[8], ARGV[i])) == 1 then
      redis.call('ZADD', times, ARGV[i + 1], ARGV[i])
    end
  end
  -- Hashes of the set the caller did not read as live: gone or expired.
  for _, held in ipairs(redis.call('SMEMBERS', hashes)) do
    if not redis.call('ZSCORE', times, held) then
      redis.call('SREM', hashes, held)
    end
  end
end
if cutoff ~= '-inf' then
  -- Forgotten as GET /token forgets them (a token past the ttl in effect is gone for good, even
  -- if token_ttl is raised again before Redis expires its record).
  for _, expired in ipairs(redis.call('ZRANGEBYSCORE', times, '-inf', cutoff, 'LIMIT', 0, FORGET_AT_ONCE)) do
    redis.call('DEL', key_of(ARGV[8], expired))
    redis.call('SREM', hashes, expired)
    redis.call('ZREM', times, expired)
  end
end
local most = tonumber(ARGV[5])
if most > 0 and redis.call('ZCOUNT', times, '(' .. cutoff, '+inf') >= most then
  return -1
end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'created', ARGV[2], 'last', ARGV[2], 'pending', '1')
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'entry', ARGV[10])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
-- Those made before this one's pending hour (token_ttl when shorter) are gone with their records;
-- the set lives as long as its newest.
local made = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', made - tonumber(ARGV[3]))
redis.call('ZADD', KEYS[4], made, ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[3])
return 1
