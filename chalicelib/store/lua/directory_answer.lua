-- Record the directory's answer on whether a token's user is still there (auth/directory_check.py),
-- unless a newer answer is recorded already: two checks of one user overlapping (the user removed
-- between them) must leave the later question's answer, not the slower one's.
-- KEYS[1] the user's check record (hash: asked, present, good, failed, entry).
-- ARGV[1] when the question was asked (epoch seconds), ARGV[2] '1' present, '0' not there, ''
-- the directory could not answer, ARGV[3] the record's time to live in seconds, ARGV[4] the
-- stable id of the entry found ('' none given: the answer goes by the name only).
-- Returns 1 when recorded, 0 when a newer answer was there.
local key, asked, present = KEYS[1], tonumber(ARGV[1]), ARGV[2]
-- The question is answered: the next one due (a failed one's retry) may be claimed at once.
redis.call('HDEL', key, 'claimed')
if present == '' then
  local failed = tonumber(redis.call('HGET', key, 'failed') or '')
  if failed == nil or failed < asked then
    redis.call('HSET', key, 'failed', ARGV[1])
  end
  -- Never made to outlive its last answer: the grace counts from that answer, not from failures.
  if redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, ARGV[3])
  end
  return 1
end
local before = tonumber(redis.call('HGET', key, 'asked') or '')
if before ~= nil and before > asked then
  return 0
end
redis.call('HSET', key, 'asked', ARGV[1], 'present', present)
redis.call('HDEL', key, 'failed')
if present == '1' then
  redis.call('HSET', key, 'good', ARGV[1])
end
if present == '1' and (ARGV[4] or '') ~= '' then
  redis.call('HSET', key, 'entry', ARGV[4])
else
  redis.call('HDEL', key, 'entry')
end
redis.call('EXPIRE', key, ARGV[3])
return 1
