-- Confirm a new on-demand request once the API has its answer: its VMs may be built from now on.
-- KEYS[1] the request. Returns 1 when it is confirmed (or was already), 0 when it is gone or was
-- failed meanwhile (its deadline passed first: a pass failed it, ondemand_reserve.lua): the API
-- then answers 503.
local request = redis.call('HMGET', KEYS[1], 'state', 'confirm_by')
if not request[1] then
  return 0
end
if not request[2] then
  return 1
end
if request[1] ~= 'open' then
  return 0
end
redis.call('HDEL', KEYS[1], 'confirm_by')
return 1
