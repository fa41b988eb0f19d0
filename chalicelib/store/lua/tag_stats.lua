-- Shared by record_tags.lua and vm_modify.lua (prepended to them when they are loaded): count
-- tags set on VMs in a day's tag statistics, bounded whatever callers send: at most 'max_names'
-- distinct tag names and 'max_values' distinct values per name are counted on their own; the
-- rest are counted under the name or value '(other)'. The distinct counts live in the same hash
-- (fields 'tagnames' and 'tagvalues:<name>'), so one day holds a bounded number of fields.
-- The previous release kept these fields in the day's durations hash: a day it recorded has
-- them moved here first (counted again through the same bounds, so the day stays within them),
-- and the durations hash is left with durations only.
-- 'stats' holds the KEYS indexes 'key' (the day's tag hash) and 'durations' (the day's
-- durations hash), and 'ttl' (seconds), 'max_names', 'max_values'; 'tags' is a list of name,
-- value, name, value...
local function count_tags(stats, tags)
  local key, durations = KEYS[stats.key], KEYS[stats.durations]
  local max_names, max_values = tonumber(stats.max_names), tonumber(stats.max_values)
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

  -- Count 'times' more of 'value' for tag 'name'. '(other)', of a name or a value, is where those
  -- past the bounds go: it takes no place of its own.
  local function count(name, value, times)
    if name ~= OTHER and not admit('tagvalues:' .. name, 'tagnames', max_names) then
      name = OTHER
    end
    redis.call('HSETNX', key, 'tagvalues:' .. name, 0)
    if value ~= OTHER and not admit('tag:' .. name .. ':' .. value, 'tagvalues:' .. name, max_values) then
      value = OTHER
    end
    redis.call('HINCRBY', key, 'tag:' .. name .. ':' .. value, times)
  end

  -- 'tagnames' is set with the first tag a day counts: the previous release counted there.
  if redis.call('HEXISTS', durations, 'tagnames') == 1 then
    local fields, moved = redis.call('HGETALL', durations), {}
    for i = 1, #fields, 2 do
      local field, value = fields[i], fields[i + 1]
      if field == 'tagnames' or string.sub(field, 1, 10) == 'tagvalues:' or string.sub(field, 1, 4) == 'tag:' then
        moved[#moved + 1] = field
      end
      local split = string.find(field, ':', 5, true)
      local times = tonumber(value)
      -- a count broken in Redis (text, a fraction, nan) is read as none, as /summary read it
      if string.sub(field, 1, 4) == 'tag:' and split and times and times >= 1 and times == math.floor(times)
          and times < 2 ^ 53 then
        count(string.sub(field, 5, split - 1), string.sub(field, split + 1), string.format('%d', times))
      end
    end
    -- HDEL a few hundred fields at a time: Lua's unpack takes a few thousand values at most
    for first = 1, #moved, 500 do
      redis.call('HDEL', durations, unpack(moved, first, math.min(first + 499, #moved)))
    end
  end

  for i = 1, #tags, 2 do
    count(tags[i], tags[i + 1], 1)
  end
  redis.call('EXPIRE', key, stats.ttl)
end
