-- Confirm a checkout once the API has its answer: the VMs are the caller's from now on.
-- ARGV: prefix, checkout_id, hostname...
-- Returns 1 when every VM is still running for this checkout (now confirmed), 0 when any was
-- returned meanwhile (its deadline passed first): the API then answers 503 and releases the rest.
local prefix, checkout_id = ARGV[1], ARGV[2]
local all = 1
for i = 3, #ARGV do
  local vm_key = prefix .. 'vm:' .. ARGV[i]
  local vm = redis.call('HMGET', vm_key, 'state', 'checkout_id')
  if vm[1] == 'running' and vm[2] == checkout_id then
    redis.call('HDEL', vm_key, 'confirm_by')
  else
    all = 0
  end
end
return all
