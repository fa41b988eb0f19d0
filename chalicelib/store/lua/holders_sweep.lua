-- Run with lua/quota.lua's functions (scripts.SHARED). Past 'max_holders' owners listed in the
-- holders set (KEYS[1]), look at up to 'batch' of those that took something longest ago: each
-- one's dead entries are dropped as a count of its holdings drops them (quota_held), so a set
-- holding nothing any more is gone (Redis deletes an empty set) and its owner leaves the list;
-- one still holding goes to the back ('now'). The scheduler's tick runs it (Store.sweep_holders)
-- instead of each take, which swept two other owners' sets.
-- ARGV[1]: JSON {max_holders, batch, now, holdings_template, vm_template, request_template,
-- request_vms_template} (keys.DERIVED_KEYS: the holders set names the owners).
-- Returns {owners looked at, owners gone from the list, owners still listed past max_holders}.
local sweep = cjson.decode(ARGV[1])
local holders_key = KEYS[1]
local excess = redis.call('ZCARD', holders_key) - sweep.max_holders
if excess <= 0 then
  return {0, 0, 0}
end
local looked, gone = 0, 0
for _, owner in ipairs(redis.call('ZRANGE', holders_key, 0, math.min(excess, sweep.batch) - 1)) do
  looked = looked + 1
  quota_held(sweep, owner)
  if redis.call('EXISTS', key_of(sweep.holdings_template, owner)) == 1 then
    redis.call('ZADD', holders_key, sweep.now, owner)
  else
    redis.call('ZREM', holders_key, owner)
    gone = gone + 1
  end
end
return {looked, gone, math.max(excess - gone, 0)}
