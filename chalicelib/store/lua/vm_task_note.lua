-- Record the provider's task reference on a VM's in-flight task, if it is still that task.
-- ARGV: prefix, hostname, task id, provider task ref. Returns 1 when recorded.
local vm_key = ARGV[1] .. 'vm:' .. ARGV[2]
local current = redis.call('HGET', vm_key, 'task')
if not current then
  return 0
end
local task = cjson.decode(current)
if task.id ~= ARGV[3] then
  return 0
end
task.ref = ARGV[4]
redis.call('HSET', vm_key, 'task', cjson.encode(task))
return 1
