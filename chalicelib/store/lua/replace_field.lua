-- Replace one field of a hash only while it holds what the caller read (compare and set): a pass
-- whose lease ran out, or that read before another pass wrote, never overwrites what the other
-- recorded (template preparations, demand-sizing decisions).
-- KEYS[1] the hash; ARGV[1] field, ARGV[2] the value read ('' when the field was absent),
-- ARGV[3] the new value ('' deletes the field). Returns 1 when it was replaced.
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
