-- Finish a VM's in-flight task, if it is still that task: append its result to a list field of
-- the record (disks, snapshots) or its error to task_errors, and clear it.
-- KEYS[1] the VM's record; ARGV: task id, list field ('' for none), value, error ('' on success),
-- the most errors task_errors keeps (store/vm_tasks.py MAX_TASK_ERRORS).
-- Failed tasks do not count toward the disk or snapshot bounds, so a caller looping on a failing
-- task could grow task_errors for as long as the VM lives: only the newest errors are kept, and
-- task_errors_dropped counts the older ones dropped.
-- Returns 1 when finished, 0 when that task was not in flight (another pass finished it).
local vm_key = KEYS[1]
local id, list_field, value, error_text = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_errors = tonumber(ARGV[5])
local current = redis.call('HGET', vm_key, 'task')
if not current or cjson.decode(current).id ~= id then
  return 0
end
local function append(field, item, most)
  local raw = redis.call('HGET', vm_key, field)
  local items = {}
  if raw and raw ~= '' then
    items = cjson.decode(raw)
  end
  items[#items + 1] = item
  local dropped = 0
  if most and #items > most then
    dropped = #items - most
    local kept = {}
    for index = dropped + 1, #items do
      kept[#kept + 1] = items[index]
    end
    items = kept
  end
  redis.call('HSET', vm_key, field, cjson.encode(items))
  return dropped
end
if error_text ~= '' then
  local dropped = append('task_errors', error_text, max_errors)
  if dropped > 0 then
    redis.call('HINCRBY', vm_key, 'task_errors_dropped', dropped)
  end
elseif list_field ~= '' then
  append(list_field, value)
end
redis.call('HDEL', vm_key, 'task')
return 1
