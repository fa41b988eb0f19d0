-- When a pass must next look at running VMs (Store.schedule_running): each VM's look is written
-- only while the VM is still running in this pool for the checkout the pass read, with the
-- lifetime it read. A stale pass (it read the VM before its user returned it, before a reap, before
-- the same name was checked out again, or before a lifetime change brought its look to now:
-- lua/vm_modify.lua) writes nothing for it: the scripts that took the VM out of running took its
-- look with them, and a look a newer change wrote stays.
-- KEYS[1] the pool's running set, KEYS[2] its running_due set, KEYS[3..] the VMs' records.
-- ARGV: for each VM (in the order of KEYS) its hostname, its next look (epoch seconds), and its
-- record's 'checkout' and 'lifetime' fields as the pass read them ('' for none).
-- Returns, per VM, 1 when its look was written, else 0.
local running_key, running_due_key = KEYS[1], KEYS[2]
local written = {}
for i = 3, #KEYS do
  local first = 4 * (i - 3) + 1
  local hostname, look, checkout, lifetime = ARGV[first], ARGV[first + 1], ARGV[first + 2], ARGV[first + 3]
  local vm = redis.call('HMGET', KEYS[i], 'state', 'checkout', 'lifetime')
  if vm[1] == 'running' and (vm[2] or '') == checkout and (vm[3] or '') == lifetime
      and redis.call('ZSCORE', running_key, hostname) then
    redis.call('ZADD', running_due_key, look, hostname)
    written[#written + 1] = 1
  else
    written[#written + 1] = 0
  end
end
return written
