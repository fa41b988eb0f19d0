-- Each pool's history at evenly spaced points, picked here so a long range sends a few hundred
-- samples per pool instead of every minute's (a week is 10,080).
-- KEYS: history sorted sets (scored by minute); ARGV: first_minute, step_minutes, points.
-- Answers, per key, one member per point: the last sample taken from the first minute to the
-- point's last minute (a step without a pass carries the one before forward), '' before any.
local first, step, points = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local last = first + points * step - 1
local answer = {}
for k, key in ipairs(KEYS) do
  local picked = {}
  local count = redis.call('ZCOUNT', key, first, last)
  if count <= points then
    -- Few samples (a short range, a new pool): read them all once and walk the points.
    local found = redis.call('ZRANGEBYSCORE', key, first, last, 'WITHSCORES')
    local index, current = 1, ''
    for point = 1, points do
      local point_end = first + point * step - 1
      while index < #found and tonumber(found[index + 1]) <= point_end do
        current = found[index]
        index = index + 2
      end
      picked[point] = current
    end
  else
    -- Many: one look-up per point of the sample at or before its end.
    for point = 1, points do
      local found = redis.call('ZREVRANGEBYSCORE', key, first + point * step - 1, first, 'LIMIT', 0, 1)
      picked[point] = found[1] or ''
    end
  end
  answer[k] = picked
end
return answer
