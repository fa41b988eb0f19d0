-- Set or remove runtime overrides of one setting for many pools at once (POST /config/poolsize,
-- /config/pooltemplate, /config/clonetarget, /poolreset): every pool of a request changes, or none
-- does.
-- KEYS[1] the setting's hash (pool -> value), KEYS[2] (when given) the record of the token the
-- change was asked with (lua/token_live.lua); ARGV pool, value pairs, an empty value removing the
-- pool's override (back to its configured value). Returns the pools whose override changed, or -1
-- when the token was deleted since the API checked it (nothing changed).
if token_gone(#KEYS >= 2 and 2 or 0) then
  return -1
end
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
