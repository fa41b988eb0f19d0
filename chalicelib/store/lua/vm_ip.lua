-- Note the address GET /vm gives for VMs in service (the record's ip: vmpooler clients read one)
-- where the provider now shows another (a reboot onto another DHCP lease), with or without DNS
-- records (manager/dns_records.py follow_addresses). Only a ready or running VM's is changed, and
-- not by a stale pass: an address seen before the one noted (ip_seen) is left.
-- KEYS: the records. ARGV[1] when the addresses were seen (the pass's time), then per record the
-- address. Returns the indexes in KEYS of the records changed (a steady pass gets an empty reply).
local seen = tonumber(ARGV[1])
local changed = {}
for index, vm_key in ipairs(KEYS) do
  local address = ARGV[1 + index]
  if redis.call('HGET', vm_key, 'ip') ~= address then  -- a steady pass reads one field of each record
    local state, last_seen = unpack(redis.call('HMGET', vm_key, 'state', 'ip_seen'))
    local last = finite(last_seen)
    if (state == 'ready' or state == 'running') and not (last and last > seen) then
      redis.call('HSET', vm_key, 'ip', address, 'ip_seen', ARGV[1])
      changed[#changed + 1] = index
    end
  end
end
return changed
