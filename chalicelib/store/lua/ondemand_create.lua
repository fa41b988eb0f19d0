-- Create an on-demand request unless its id is taken (a duplicate is the client's 409), and
-- nudge the reconcile of each pool that builds it, in the same step.
-- ARGV: prefix, request id, now, record ttl seconds, JSON {field: value}, VMs asked for,
-- JSON quota (see quota.lua; '' for none), pools to build in...
-- Returns 1 when created, 0 when a request with that id exists, or the limit it would pass.
local prefix, id, now, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = prefix .. 'ondemand:' .. id
if redis.call('EXISTS', key) == 1 then
  return 0
end
local quota = nil
if ARGV[7] ~= '' then
  quota = cjson.decode(ARGV[7])
end
local refusal = quota_refusal(quota, prefix, tonumber(ARGV[6]), 1)
if refusal ~= nil then
  return refusal
end
quota_take(quota, 'od:' .. id, tonumber(ARGV[6]))
for field, value in pairs(cjson.decode(ARGV[5])) do
  redis.call('HSET', key, field, value)
end
redis.call('EXPIRE', key, ttl)
for i = 8, #ARGV do
  redis.call('ZADD', prefix .. 'ondemand:open:' .. ARGV[i], now, id)
  local wake_key = prefix .. 'wake:' .. ARGV[i]
  redis.call('LPUSH', wake_key, '1')
  redis.call('LTRIM', wake_key, 0, 0)
  redis.call('EXPIRE', wake_key, 60)
end
return 1
