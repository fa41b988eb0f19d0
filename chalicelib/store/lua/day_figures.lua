-- The clone and boot figures of days, without tag counts: a day the previous release recorded
-- keeps up to thousands of them in the same hash (about 1.7 MB of answer), and /status and
-- /summary/boot|clone show none. They are left out here, in Redis, not sent to be dropped.
-- KEYS[i] the durations hash of a day; returns, per key, its other fields and values, flat.
local found = {}
for index, key in ipairs(KEYS) do
  local fields, kept = redis.call('HGETALL', key), {}
  for i = 1, #fields, 2 do
    local field = fields[i]
    if not (field == 'tagnames' or string.sub(field, 1, 10) == 'tagvalues:' or string.sub(field, 1, 4) == 'tag:') then
      kept[#kept + 1] = field
      kept[#kept + 1] = fields[i + 1]
    end
  end
  found[index] = kept
end
return found
