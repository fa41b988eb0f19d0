-- Put a VM's in-flight task back at the head of its queue, if it is still that task and nothing
-- of it reached the provider (no ref, no lost answer): its start was never sent (the provider
-- could not be reached), so the VM's next take (lua/vm_task_take.lua) hands it to a pass again,
-- to one pass only. ``first_taken`` keeps its first take's time (manager/vm_tasks.py budgets the
-- retries from it).
-- KEYS[1] the VM's record, KEYS[2] its task queue, KEYS[3] its pool's set of VMs with tasks.
-- ARGV: task id, hostname, now, the queue's TTL (seconds). Returns 1 when requeued.
local vm_key, queue_key, pool_tasks_key = KEYS[1], KEYS[2], KEYS[3]
local current = redis.call('HGET', vm_key, 'task')
if not current then
  return 0
end
local task = cjson.decode(current)
if task.id ~= ARGV[1] or task.ref or task.answer_lost then
  return 0
end
task.first_taken = task.first_taken or task.started
task.started = nil
task.taker = nil
redis.call('LPUSH', queue_key, cjson.encode(task))
redis.call('EXPIRE', queue_key, ARGV[4])
redis.call('ZADD', pool_tasks_key, 'NX', ARGV[3], ARGV[2])
redis.call('HDEL', vm_key, 'task')
return 1
