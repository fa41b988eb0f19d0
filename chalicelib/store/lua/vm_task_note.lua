-- Record the provider's task reference on a VM's in-flight task, if it is still that task; or,
-- with a lost answer's message instead, that its start was sent and its answer lost (the
-- provider may have done it: manager/vm_tasks.py asks it each pass, ``answer_lost``).
-- KEYS[1] the VM's record; ARGV: task id, provider task ref ('' when lost), the lost answer's
-- message ('' or absent when the ref is recorded). Returns 1 when recorded.
local vm_key = KEYS[1]
local current = redis.call('HGET', vm_key, 'task')
if not current then
  return 0
end
local task = cjson.decode(current)
if task.id ~= ARGV[1] then
  return 0
end
if ARGV[3] and ARGV[3] ~= '' then
  task.answer_lost = ARGV[3]
else
  task.ref = ARGV[2]
end
redis.call('HSET', vm_key, 'task', cjson.encode(task))
return 1
