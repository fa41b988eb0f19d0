-- Take the next queued disk/snapshot task of a VM unless one is in flight: popping it and
-- recording it on the VM in one step is what lets only one pass start it.
-- KEYS[1] the VM's record, KEYS[2] its task queue, KEYS[3] its pool's set of VMs with tasks.
-- ARGV: hostname, now, taker (the process taking it: store/leases.py holder_label), the deadline
-- (ms of Redis's clock, '' none: store/deadline.py).
-- Run past its deadline (Redis frozen past the caller's socket timeout: its pass gave up on the
-- answer and starts nothing) it takes nothing: a task taken then was never started, and after
-- the start grace (manager/vm_tasks.py TASK_START_GRACE_SECONDS) it failed as "never started"
-- instead of being started by the next pass.
-- Returns JSON {"task": <in-flight task> or absent, "new": true when just taken}
local vm_key, queue_key, pool_tasks_key = KEYS[1], KEYS[2], KEYS[3]
local hostname, now, taker = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local current = redis.call('HGET', vm_key, 'task')
if current then
  return cjson.encode({task = cjson.decode(current), new = false})
end
if past_deadline(ARGV[4]) then
  return cjson.encode({new = false})
end
local raw = redis.call('LPOP', queue_key)
if not raw or redis.call('EXISTS', vm_key) == 0 then
  redis.call('DEL', queue_key)
  redis.call('ZREM', pool_tasks_key, hostname)
  return cjson.encode({new = false})
end
local task = cjson.decode(raw)
task.started = now
task.taker = taker
redis.call('HSET', vm_key, 'task', cjson.encode(task))
return cjson.encode({task = task, new = true})
