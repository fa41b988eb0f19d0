-- Note the generation of the config a function runs with, and say whether it is the newest one
-- any function has run with (configs pushed to S3 are ordered by when they were written).
-- KEYS[1] the newest generation seen. ARGV[1] this function's.
-- Returns 1 when it is not older than the newest (and records it when newer), 0 when it is older.
local newest = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if mine > newest then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
if mine == newest then
  return 1
end
return 0
