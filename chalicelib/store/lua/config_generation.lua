-- Note the generation of the config a function runs with, and say whether it is the newest one
-- any function runs with (configs pushed to S3 are ordered by their push, config_source.py's
-- object_generation). A newest one no function has used for ttl seconds gives way: a push undone by deleting the object's newest
-- version leaves every function with an older config, and they must not wait on it for ever.
-- KEYS[1] "<newest generation> <when a function last ran with it>".
-- ARGV: this function's generation, now, ttl (seconds).
-- Returns 1 when this function's config is the newest (and records it so), 0 when it is older.
local mine, now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local newest, seen = string.match(redis.call('GET', KEYS[1]) or '', '^(%S+) (%S+)$')
newest, seen = tonumber(newest), tonumber(seen)
if newest and seen and mine < newest and now - seen <= ttl then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
return 1
