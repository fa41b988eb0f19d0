-- Set or remove runtime overrides of one setting for many pools at once (POST /config/poolsize,
-- /config/pooltemplate, /config/clonetarget): every pool of a request changes, or none does.
-- KEYS[1] the setting's hash (pool -> value); ARGV pool, value pairs, an empty value removing the
-- pool's override (back to its configured value). Returns the pools whose override changed.
local changed = {}
for index = 1, #ARGV, 2 do
  local pool, value = ARGV[index], ARGV[index + 1]
  local before = redis.call('HGET', KEYS[1], pool)
  if value == '' then
    if before then
      redis.call('HDEL', KEYS[1], pool)
      changed[#changed + 1] = pool
    end
  elseif before ~= value then
    redis.call('HSET', KEYS[1], pool, value)
    changed[#changed + 1] = pool
  end
end
return changed
