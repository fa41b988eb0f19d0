-- Give the VMs of a checkout nobody received back to their pool's ready set, as if never taken.
-- Used by the API when it cannot confirm a checkout (it answers 503), and by a reconcile pass for
-- VMs still unconfirmed past their deadline (the checkout's answer was lost on its way).
-- KEYS[1] the changes counter, KEYS[2] the service's running set (keys.running), then for each VM
-- its record, its pool's running set and ready set, the holdings set of the owner that took it
-- (its record's 'holdings'; the record's own key when it has none), and its pool's running_due
-- set (the checkout's next look, its confirmation deadline: it goes with the VM's return, as a
-- move out of running takes it in lua/move.lua).
-- ARGV: now, checkout_id, unconfirmed_only ('1': only VMs still unconfirmed whose confirm_by is
--       past now), then for each VM (in the order of KEYS) its hostname, pool and '1' when its
--       holdings set is given.
-- A VM whose record names another pool than the caller read is left alone. A VM released leaves
-- its owner's holdings (quota.lua): the next checkout may take it, and it is that owner's then.
-- Returns the hostnames returned to ready.
local now, checkout_id, unconfirmed_only = ARGV[1], ARGV[2], ARGV[3]
local change_seq = redis.call('GET', KEYS[1]) or '0'
local all_running_key = KEYS[2]
local released = {}
for i = 1, (#KEYS - 2) / 5 do
  local first = 5 * i - 2
  local vm_key, running_key, ready_key, holdings_key, running_due_key =
    KEYS[first], KEYS[first + 1], KEYS[first + 2], KEYS[first + 3], KEYS[first + 4]
  local hostname, pool, held = ARGV[3 * i + 1], ARGV[3 * i + 2], ARGV[3 * i + 3] == '1'
  local vm = redis.call('HMGET', vm_key, 'state', 'checkout_id', 'confirm_by', 'pool', 'ready_at')
  local eligible = vm[1] == 'running' and vm[2] == checkout_id and vm[4] == pool
  if eligible and unconfirmed_only == '1' then
    -- A deadline unreadable (broken by hand: text made this script fail, -inf returned a VM in
    -- use) reads as none, as the pass reads it (manager/running.py): the VM stays its user's.
    local deadline = finite(vm[3])
    eligible = deadline ~= nil and deadline <= tonumber(now)
  end
  if eligible and redis.call('ZREM', running_key, hostname) == 1 then
    redis.call('ZADD', ready_key, vm[5] or now, hostname)
    redis.call('ZREM', all_running_key, hostname)
    redis.call('ZREM', running_due_key, hostname)
    redis.call('HDEL', vm_key, 'checkout', 'checkout_id', 'confirm_by', 'confirm_window', 'lifetime', 'token_user',
      'token_id', 'token_entry', 'migration', 'holdings')
    if held then
      redis.call('ZREM', holdings_key, 'vm:' .. hostname)
    end
    redis.call('HSET', vm_key, 'state', 'ready', 'change_seq', change_seq)
    released[#released + 1] = hostname
  end
end
return released
