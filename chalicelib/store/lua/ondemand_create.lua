-- Create an on-demand request unless its id is taken (a duplicate is the client's 409), and
-- nudge the reconcile of each pool that builds it, in the same step.
-- KEYS[1] the request, then for each of the n pools to build in its open-request set and its wake
-- list (KEYS[2], KEYS[3], ...); then quota.lua's keys.
-- ARGV: request id, now, record ttl seconds, JSON {field: value}, VMs asked for,
-- JSON quota (see quota.lua; '' for none), n.
-- Returns 1 when created, 0 when a request with that id exists, or the limit it would pass.
local id, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  return 0
end
local quota = nil
if ARGV[6] ~= '' then
  quota = cjson.decode(ARGV[6])
end
local refusal = quota_refusal(quota, tonumber(ARGV[5]), 1)
if refusal ~= nil then
  return refusal
end
quota_take_request(quota, id, tonumber(ARGV[5]))
for field, value in pairs(cjson.decode(ARGV[4])) do
  redis.call('HSET', key, field, value)
end
redis.call('EXPIRE', key, ttl)
for i = 1, tonumber(ARGV[7]) do
  local open_key, wake_key = KEYS[2 * i], KEYS[2 * i + 1]
  redis.call('ZADD', open_key, now, id)
  redis.call('LPUSH', wake_key, '1')
  redis.call('LTRIM', wake_key, 0, 0)
  redis.call('EXPIRE', wake_key, 60)
end
return 1
