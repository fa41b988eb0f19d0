-- Note, just before a pass asks the provider for clones, that it asks (the field 'clone_asked',
-- the pass's time) on each VM still pending in its pool with its place under the task limit
-- counted (the cloning set): a pass that dies between the provider's answer and noting the task
-- leaves the mark, and the pending step then keeps the slot counted until the VM shows or the
-- pool's timeout (manager/pending.py). A VM no longer pending, or whose slot was given back
-- (given up by another pass as never started, its on-demand request ended), is not marked, and
-- the caller does not clone it: no clone ever runs without its slot counted.
-- A pass of a leased run (manager/runner.py) names its lease token: once the pool's lease is not
-- that token (it ran out while the run was frozen, another run took the pool) nothing is marked.
-- Checked here, with the mark, not only by the run's renewal before it: a run frozen between
-- the two would mark VMs that it then never clones (it stops at its next renewal), holding their
-- slots as asked (up to the pool's timeout) instead of giving them back after the start grace.
-- KEYS[1] the pool's pending set, KEYS[2] the cloning set, KEYS[3] the pool's lease, then one VM
-- record per VM.
-- ARGV: now, the run's lease token ('' outside a leased run: no lease checked), the placement the
-- clones are asked in ('' none: manager/placement.py, written with the mark so that a clone whose
-- task is never noted is still looked for, and destroyed, where it was asked if its pool moves),
-- the deadline (ms of Redis's clock, '' none: store/deadline.py), then the VMs' hostnames (in
-- the order of their records).
-- Run past its deadline (Redis frozen past the caller's socket timeout: the pass gave up on the
-- answer and asks for no clone) nothing is marked: a VM marked and never cloned would hold its
-- slot as asked after the start grace (up to the pool's timeout when the provider cannot tell).
-- Returns per VM 1 when marked (the clone may be asked for), 0 when not.
local FIRST_RECORD = 4 -- in KEYS; its hostname is ARGV[index + 1]
local results = {}
local leased = not past_deadline(ARGV[4]) and (ARGV[2] == '' or redis.call('GET', KEYS[3]) == ARGV[2])
for index = FIRST_RECORD, #KEYS do
  local hostname = ARGV[index + 1]
  if leased and redis.call('ZSCORE', KEYS[1], hostname) and redis.call('ZSCORE', KEYS[2], hostname)
      and redis.call('EXISTS', KEYS[index]) == 1 then
    redis.call('HSET', KEYS[index], 'clone_asked', ARGV[1])
    if ARGV[3] ~= '' then
      redis.call('HSET', KEYS[index], 'placement', ARGV[3])
    end
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
return results
