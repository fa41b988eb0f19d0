-- Confirm a checkout once the API has its answer: the VMs are the caller's from now on.
-- KEYS: the records of the checkout's VMs; ARGV[1] checkout_id.
-- Returns 1 when every VM is still running for this checkout (now confirmed), 0 when any was
-- returned meanwhile (its deadline passed first): the API then answers 503 and releases the rest.
local checkout_id = ARGV[1]
local all = 1
for i = 1, #KEYS do
  local vm = redis.call('HMGET', KEYS[i], 'state', 'checkout_id')
  if vm[1] == 'running' and vm[2] == checkout_id then
    redis.call('HDEL', KEYS[i], 'confirm_by')
  else
    all = 0
  end
end
return all
