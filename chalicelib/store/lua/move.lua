-- Move one VM from one state to another, only if it is still in the state the caller saw.
-- This is what keeps a pass from reaping a VM that was checked out after it looked.
-- KEYS[1] the VM's record, KEYS[2] the changes counter, KEYS[3] the cloning set, and, when the
-- caller knows the pool, KEYS[4] the pool's from_state set, KEYS[5] its to_state set, KEYS[6] its
-- wake list.
-- ARGV: hostname, to_state, now, record_ttl_seconds, nudge, unchanged_since, lifetime_ended,
--       from_template, to_template, wake_template, field, value, ...
-- to_state "destroyed" takes the VM out of every set and lets its record expire after the ttl.
-- nudge "1" wakes the pool's reconcile (a move made by the API, such as returning a VM).
-- The templates ('' when KEYS[4..6] are given) name those three keys for the pool its record names
--   (DELETE /vm/<hostname>: one round trip, no read first; see keys.DERIVED_KEYS).
-- unchanged_since (a mark of the changes counter, or ''): move only if the VM's state has not
--   changed since the mark was taken. A pass takes the mark before reading the provider's
--   inventory, so "gone from the provider" is believed only of a VM that was already in its state
--   when the inventory was read, never of one made ready or checked out after a stale read.
-- lifetime_ended (the default lifetime in hours, or ''): move only if the VM's checkout time plus
--   its lifetime, as recorded now (a PUT may have extended it since the pass looked), is past now.
-- Every move stamps the VM with the counter's value (change_seq).
-- Returns 1 (or, when the pool came from the record, the pool's name) when moved, 0 when the VM
-- was no longer in from_state or a condition did not hold.
local hostname, to_state, now, ttl, nudge, unchanged_since, lifetime_ended =
  ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local vm_key, changes_key, cloning_key = KEYS[1], KEYS[2], KEYS[3]
local from_key, to_key, wake_key = KEYS[4], KEYS[5], KEYS[6]
local moved = 1
if ARGV[8] ~= '' then
  local pool = redis.call('HGET', vm_key, 'pool')
  if not pool then
    return 0
  end
  moved = pool
  from_key = key_of(ARGV[8], pool)
  to_key = key_of(ARGV[9], pool)
  wake_key = key_of(ARGV[10], pool)
end
if unchanged_since ~= '' and redis.call('ZSCORE', from_key, hostname) then
  local changed = tonumber(redis.call('HGET', vm_key, 'change_seq') or '0') or 0
  if changed >= tonumber(unchanged_since) then
    return 0
  end
end
if lifetime_ended ~= '' and redis.call('ZSCORE', from_key, hostname) then
  local record = redis.call('HMGET', vm_key, 'checkout', 'lifetime')
  local lifetime = math.floor(tonumber(record[2] or '') or 0)
  if lifetime <= 0 then
    lifetime = tonumber(lifetime_ended)
  end
  local checkout = tonumber(record[1] or '') or tonumber(now)
  if tonumber(now) - checkout < lifetime * 3600 then
    return 0
  end
end
if redis.call('ZREM', from_key, hostname) == 0 then
  return 0
end
redis.call('ZREM', cloning_key, hostname)
redis.call('HSET', vm_key, 'state', to_state, to_state .. '_at', now,
  'change_seq', redis.call('GET', changes_key) or '0')
for i = 11, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', vm_key, ARGV[i])
  else
    redis.call('HSET', vm_key, ARGV[i], ARGV[i + 1])
  end
end
if to_state == 'destroyed' then
  redis.call('EXPIRE', vm_key, ttl)
else
  redis.call('ZADD', to_key, now, hostname)
end
if nudge == '1' then
  redis.call('LPUSH', wake_key, '1')
  redis.call('LTRIM', wake_key, 0, 0)
  redis.call('EXPIRE', wake_key, 60)
end
return moved
