-- Count tags set on VMs in a day's statistics, bounded whatever callers send: at most ARGV[2]
-- distinct tag names and ARGV[3] distinct values per name are counted on their own; the rest
-- are counted under the name or value '(other)'. The distinct counts live in the same hash
-- (fields 'tagnames' and 'tagvalues:<name>'), so one day holds a bounded number of fields.
-- KEYS[1] the day's hash; ARGV[1] ttl seconds, ARGV[2] max names, ARGV[3] max values per name,
-- ARGV[4..] name, value, ...
local key, ttl, max_names, max_values = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local OTHER = '(other)'

-- Whether 'field' may be counted: it is known already, or it is new and 'counter' is below
-- 'limit' (then the counter takes it).
local function admit(field, counter, limit)
  if redis.call('HEXISTS', key, field) == 1 then
    return true
  end
  if tonumber(redis.call('HGET', key, counter) or '0') >= limit then
    return false
  end
  redis.call('HINCRBY', key, counter, 1)
  return true
end

for i = 4, #ARGV, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  -- a name is known once any of its values was counted: its values' counter exists
  if not admit('tagvalues:' .. name, 'tagnames', max_names) then
    name = OTHER
  end
  redis.call('HSETNX', key, 'tagvalues:' .. name, 0)
  if not admit('tag:' .. name .. ':' .. value, 'tagvalues:' .. name, max_values) then
    value = OTHER
  end
  redis.call('HINCRBY', key, 'tag:' .. name .. ':' .. value, 1)
end
redis.call('EXPIRE', key, ttl)
return 1
