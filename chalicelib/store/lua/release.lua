-- Give the VMs of a checkout nobody received back to their pool's ready set, as if never taken.
-- Used by the API when it cannot confirm a checkout (it answers 503), and by a reconcile pass for
-- VMs still unconfirmed past their deadline (the checkout's answer was lost on its way).
-- KEYS[1] the changes counter, KEYS[2..] the records of the VMs.
-- ARGV: now, checkout_id, unconfirmed_only ('1': only VMs still unconfirmed whose confirm_by is
--       past now), running_template, ready_template (a VM's pool sets, named by the pool its
--       record names: keys.DERIVED_KEYS), then the hostnames, in the order of their records.
-- Returns the hostnames returned to ready.
local now, checkout_id, unconfirmed_only = ARGV[1], ARGV[2], ARGV[3]
local running_template, ready_template = ARGV[4], ARGV[5]
local change_seq = redis.call('GET', KEYS[1]) or '0'
local released = {}
for i = 2, #KEYS do
  local vm_key, hostname = KEYS[i], ARGV[i + 4]
  local vm = redis.call('HMGET', vm_key, 'state', 'checkout_id', 'confirm_by', 'pool', 'ready_at')
  local eligible = vm[1] == 'running' and vm[2] == checkout_id
  if eligible and unconfirmed_only == '1' then
    eligible = vm[3] and tonumber(vm[3]) <= tonumber(now)
  end
  if eligible and redis.call('ZREM', key_of(running_template, vm[4]), hostname) == 1 then
    redis.call('ZADD', key_of(ready_template, vm[4]), vm[5] or now, hostname)
    redis.call('HDEL', vm_key, 'checkout', 'checkout_id', 'confirm_by', 'lifetime', 'token_user', 'token_id', 'migration')
    redis.call('HSET', vm_key, 'state', 'ready', 'change_seq', change_seq)
    released[#released + 1] = hostname
  end
end
return released
