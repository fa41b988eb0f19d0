-- Claim the publication of VMs' addresses in DNS (manager/dns_records.py): a pass that saw a VM at
-- addresses vmpool has not published takes the next version of the VM's record before it sends the
-- records to DNS, and notes them published (dns_confirm.lua) only if no other pass claimed since.
-- Addresses seen at an earlier time than the ones last claimed are never claimed: a stale pass (an
-- older inventory read) cannot send a VM's former address after a newer pass sent its new one.
-- KEYS: the records. ARGV[1] when the addresses were seen (the pass's time), ARGV[2] the entry that
-- publishes, ARGV[3] its domain, then per record: the name it is published under, the addresses (as
-- dns/base.py's address_text notes them: one, or the IPv4 and the IPv6 one).
-- The name and the entry are noted on a record that has none (before the record exists in DNS, so
-- it is never forgotten), with the domain (GET /vm's fqdn: the name published). A record published
-- under another name (case aside) or by another entry (the pool's dns_plugin or the entry's domain
-- changed) is not claimed: its former record goes first (dns_forget.lua).
-- Returns, for each record whose addresses are not the ones published under that name by that
-- entry (a steady pass gets an empty reply), its index in KEYS, the version claimed (> 0), -1 when
-- not claimed (no record, not in service, or a later look already claimed) or -2 when published
-- under another name or by another entry (in service), and the addresses published before ('' for
-- none), one after the other.
local seen, entry, domain = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local results = {}
for index, vm_key in ipairs(KEYS) do
  local fqdn, address = ARGV[2 + 2 * index], ARGV[3 + 2 * index]
  local published, name, plugin = unpack(redis.call('HMGET', vm_key, 'dns_published', 'dns_name', 'dns_plugin'))
  -- DNS names ignore case: a domain rewritten in capitals is the same name, no move.
  local elsewhere = name and (string.lower(name) ~= string.lower(fqdn) or (plugin and plugin ~= entry))
  local result = 0
  if published ~= address or elsewhere then  -- a steady pass reads three fields of each record
    local state, last_seen = unpack(redis.call('HMGET', vm_key, 'state', 'dns_seen'))
    local last = finite(last_seen)
    if state ~= 'pending' and state ~= 'ready' and state ~= 'running' then
      result = -1
    elseif elsewhere then
      result = -2
    elseif last and last > seen then
      result = -1
    else
      if not name then
        redis.call('HSET', vm_key, 'dns_name', fqdn, 'dns_plugin', entry)
        if domain ~= '' then
          redis.call('HSET', vm_key, 'domain', domain)
        end
      end
      redis.call('HSET', vm_key, 'dns_seen', ARGV[1])
      result = redis.call('HINCRBY', vm_key, 'dns_version', 1)
    end
  end
  if result ~= 0 then
    results[#results + 1] = index
    results[#results + 1] = result
    results[#results + 1] = published or ''
  end
end
return results
