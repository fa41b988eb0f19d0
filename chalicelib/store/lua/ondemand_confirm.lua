-- Confirm a new on-demand request once the API has its answer: its VMs may be built from now on.
-- KEYS[1] the request. Returns 1 when it is confirmed (or was already), 0 when it is gone or was
-- failed meanwhile (its deadline passed first: a pass failed it, ondemand_reserve.lua): the API
-- then answers 503.
-- Past the request's 'confirm_window' (lua/ondemand_create.lua) on Redis's clock, it confirms
-- nothing: this confirmation waited in Redis (paused) past the API's socket timeout, and the API
-- has given up on it and answers 503.
local request = redis.call('HMGET', KEYS[1], 'state', 'confirm_by', 'confirm_window')
if not request[1] then
  return 0
end
if not request[2] then
  return 1
end
if request[1] ~= 'open' then
  return 0
end
local window = tonumber(request[3] or '')
if window ~= nil then
  local time = redis.call('TIME')
  if tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) > window then
    return 0
  end
end
redis.call('HDEL', KEYS[1], 'confirm_by', 'confirm_window')
return 1
