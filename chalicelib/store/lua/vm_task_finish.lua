-- Finish a VM's in-flight task, if it is still that task: append its result to a list field of
-- the record (disks, snapshots) or its error to task_errors, and clear it.
-- KEYS[1] the VM's record; ARGV: task id, list field ('' for none), value, error ('' on success)
-- Returns 1 when finished, 0 when that task was not in flight (another pass finished it).
local vm_key = KEYS[1]
local id, list_field, value, error_text = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HGET', vm_key, 'task')
if not current or cjson.decode(current).id ~= id then
  return 0
end
local function append(field, item)
  local raw = redis.call('HGET', vm_key, field)
  local items = {}
  if raw and raw ~= '' then
    items = cjson.decode(raw)
  end
  items[#items + 1] = item
  redis.call('HSET', vm_key, field, cjson.encode(items))
end
if error_text ~= '' then
  append('task_errors', error_text)
elseif list_field ~= '' then
  append(list_field, value)
end
redis.call('HDEL', vm_key, 'task')
return 1
