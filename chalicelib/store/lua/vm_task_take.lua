-- Take the next queued disk/snapshot task of a VM unless one is in flight: popping it and
-- recording it on the VM in one step is what lets only one pass start it.
-- ARGV: prefix, hostname, pool, now
-- Returns JSON {"task": <in-flight task> or absent, "new": true when just taken}
local prefix, hostname, pool, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local vm_key = prefix .. 'vm:' .. hostname
local queue_key = prefix .. 'vmtasks:' .. hostname
local current = redis.call('HGET', vm_key, 'task')
if current then
  return cjson.encode({task = cjson.decode(current), new = false})
end
local raw = redis.call('LPOP', queue_key)
if not raw or redis.call('EXISTS', vm_key) == 0 then
  redis.call('DEL', queue_key)
  redis.call('ZREM', prefix .. 'vmtasks:pool:' .. pool, hostname)
  return cjson.encode({new = false})
end
local task = cjson.decode(raw)
task.started = now
redis.call('HSET', vm_key, 'task', cjson.encode(task))
return cjson.encode({task = task, new = true})
