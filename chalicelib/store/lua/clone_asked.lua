-- Note, just before a pass asks the provider for clones, that it asks (the field 'clone_asked',
-- the pass's time) on each VM still pending in its pool with its place under the task limit
-- counted (the cloning set): a pass that dies between the provider's answer and noting the task
-- leaves the mark, and the pending step then keeps the slot counted until the VM shows or the
-- pool's timeout (manager/pending.py). A VM no longer pending, or whose slot was given back
-- (given up by another pass as never started, its on-demand request ended), is not marked, and
-- the caller does not clone it: no clone ever runs without its slot counted.
-- KEYS[1] the pool's pending set, KEYS[2] the cloning set, then one VM record per VM.
-- ARGV: now, then the VMs' hostnames (in the order of their records).
-- Returns per VM 1 when marked (the clone may be asked for), 0 when not.
local results = {}
for index = 3, #KEYS do
  local hostname = ARGV[index - 1]
  if redis.call('ZSCORE', KEYS[1], hostname) and redis.call('ZSCORE', KEYS[2], hostname)
      and redis.call('EXISTS', KEYS[index]) == 1 then
    redis.call('HSET', KEYS[index], 'clone_asked', ARGV[1])
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
return results
