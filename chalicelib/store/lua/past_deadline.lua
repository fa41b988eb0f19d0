-- Shared by the scripts that must not act after their caller gave up (prepended to them when
-- they are loaded: scripts.SHARED): whether Redis's clock has passed 'deadline' (ms, text; ''
-- for none: store/deadline.py), the moment the API answered 503 for this script's answer. A
-- script that waited in Redis longer (paused, behind a slow script) would otherwise act after
-- that 503, and the retry the 503 asks for would act again.
local function past_deadline(deadline)
  if deadline == nil or deadline == '' then
    return false
  end
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) > tonumber(deadline)
end
