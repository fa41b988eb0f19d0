-- Record the provider's task reference on a VM's in-flight task, if it is still that task.
-- KEYS[1] the VM's record; ARGV: task id, provider task ref. Returns 1 when recorded.
local vm_key = KEYS[1]
local current = redis.call('HGET', vm_key, 'task')
if not current then
  return 0
end
local task = cjson.decode(current)
if task.id ~= ARGV[1] then
  return 0
end
task.ref = ARGV[2]
redis.call('HSET', vm_key, 'task', cjson.encode(task))
return 1
