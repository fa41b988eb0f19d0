-- Note VMs' addresses published in DNS, each only if its claim (dns_claim.lua) is still the last
-- one. Otherwise another pass claimed since and both sent their addresses, in an order nobody knows:
-- what DNS holds is unknown ('?'), and the version moves on so that the other pass's note fails
-- too. The next pass then sends the addresses it sees again.
-- KEYS: the records. ARGV: per record, the version claimed and the addresses sent.
-- (The record's ip, GET /vm's one address, follows the VM's primary address: vm_ip.lua.)
-- Returns per record 1 when noted, 0 when not (claimed since, or the record is gone).
local results = {}
for index, vm_key in ipairs(KEYS) do
  local version, address = ARGV[2 * index - 1], ARGV[2 * index]
  local current = redis.call('HGET', vm_key, 'dns_version')
  if current == false then
    results[index] = 0
  elseif current == version then
    redis.call('HSET', vm_key, 'dns_published', address)
    results[index] = 1
  else
    redis.call('HINCRBY', vm_key, 'dns_version', 1)
    redis.call('HSET', vm_key, 'dns_published', '?')
    results[index] = 0
  end
end
return results
