-- Replace one field of a hash only while it holds what the caller read (compare and set): a pass
-- whose lease ran out never overwrites what the next one recorded.
-- KEYS[1] the hash; ARGV[1] field, ARGV[2] the value read, ARGV[3] the new value ('' deletes the
-- field). Returns 1 when it was replaced.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
