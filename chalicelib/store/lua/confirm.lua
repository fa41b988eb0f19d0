-- Confirm a checkout once the API has its answer: the VMs are the caller's from now on.
-- KEYS: the records of the checkout's VMs; ARGV[1] checkout_id.
-- Returns 1 when every VM is still running for this checkout (now confirmed), 0 when any was
-- returned meanwhile (its deadline passed first): the API then answers 503 and releases the rest.
-- A VM whose 'confirm_window' (checkout.lua) has passed on Redis's clock is not confirmed either:
-- this confirmation waited in Redis (paused) past the API's socket timeout, so the API has given
-- up on it and answers 503; confirming it would leave the VM checked out to nobody.
local checkout_id = ARGV[1]
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local all = 1
for i = 1, #KEYS do
  local vm = redis.call('HMGET', KEYS[i], 'state', 'checkout_id', 'confirm_window')
  local window = tonumber(vm[3] or '')
  if vm[1] == 'running' and vm[2] == checkout_id and (window == nil or now_ms <= window) then
    redis.call('HDEL', KEYS[i], 'confirm_by', 'confirm_window')
  else
    all = 0
  end
end
return all
