-- Claim the publication of VMs' addresses in DNS (manager/dns_records.py): a pass that saw a VM at
-- an address vmpool has not published takes the next version of the VM's record before it sends the
-- record to DNS, and notes it published (dns_confirm.lua) only if no other pass claimed since.
-- An address seen at an earlier time than the one last claimed is never claimed: a stale pass (an
-- older inventory read) cannot send a VM's former address after a newer pass sent its new one.
-- KEYS: the records. ARGV[1] when the addresses were seen (the pass's time), ARGV[2] the entry that
-- publishes, then per record: the name it is published under, the address.
-- The name and the entry are noted on a record that has none (before the record exists in DNS, so
-- it is never forgotten); a record published under another name or by another entry is not claimed.
-- Returns, for each record whose address is not the one published (a steady pass gets an empty
-- reply), its index in KEYS, the version claimed (> 0) or -1 when not claimed (no record, not in
-- service, published elsewhere, or a later look already claimed), and the address published
-- before ('' for none), one after the other.
local seen, entry = tonumber(ARGV[1]), ARGV[2]
local results = {}
for index, vm_key in ipairs(KEYS) do
  local fqdn, address = ARGV[1 + 2 * index], ARGV[2 + 2 * index]
  local published = redis.call('HGET', vm_key, 'dns_published')
  local state, name, plugin, last_seen
  if published ~= address then  -- a steady pass reads that one field of each record
    state, name, plugin, last_seen = unpack(redis.call('HMGET', vm_key, 'state', 'dns_name', 'dns_plugin', 'dns_seen'))
  end
  local last = finite(last_seen)
  local result
  if published == address then
    result = 0
  elseif state ~= 'pending' and state ~= 'ready' and state ~= 'running' then
    result = -1
  elseif name and (name ~= fqdn or (plugin and plugin ~= entry)) then
    result = -1
  elseif last and last > seen then
    result = -1
  else
    if not name then
      redis.call('HSET', vm_key, 'dns_name', fqdn, 'dns_plugin', entry)
    end
    redis.call('HSET', vm_key, 'dns_seen', ARGV[1])
    result = redis.call('HINCRBY', vm_key, 'dns_version', 1)
  end
  if result ~= 0 then
    results[#results + 1] = index
    results[#results + 1] = result
    results[#results + 1] = published or ''
  end
end
return results
