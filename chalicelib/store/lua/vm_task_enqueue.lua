-- Queue a disk/snapshot task on a checked-out VM (POST /vm/<host>/disk/<gb>, .../snapshot...),
-- within its bounds, and nudge its pool's reconcile, in one step: concurrent requests cannot
-- pass a bound together, and a VM returned (or checked out again) since the API checked who may
-- change it gets nothing.
-- KEYS[1] the VM's record, KEYS[2] its task queue, KEYS[3] its pool's set of VMs with tasks,
-- KEYS[4] the pool's wake list.
-- ARGV: hostname, now, task (JSON), queue ttl seconds, most tasks waiting, list field the task
-- adds to ('disks', 'snapshots'; '' for none), most items that list may reach counting the tasks
-- in flight and queued that add to it, the record's 'checkout' field as the API read it.
-- Returns 1 when queued, 0 when the VM is no longer running for that checkout (or that checkout
-- was never confirmed), -1 when its queue is full, -2 when the list would pass its bound (then
-- nothing changed).
local vm_key, queue_key, pool_tasks_key, wake_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local hostname, now, task_json, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local max_queued, list_field, max_items, checkout = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), ARGV[8]
local seen = redis.call('HMGET', vm_key, 'state', 'checkout', 'task', list_field ~= '' and list_field or 'state',
  'confirm_by')
if seen[1] ~= 'running' or (seen[2] or '') ~= checkout or seen[5] then -- confirm_by: see vm_modify.lua
  return 0
end
local queued = redis.call('LRANGE', queue_key, 0, -1)
if #queued >= max_queued then
  return -1
end
if list_field ~= '' then
  local kind = cjson.decode(task_json).kind
  local items = 1
  if seen[4] and seen[4] ~= '' then
    items = items + #cjson.decode(seen[4])
  end
  if seen[3] and cjson.decode(seen[3]).kind == kind then
    items = items + 1
  end
  for _, raw in ipairs(queued) do
    if cjson.decode(raw).kind == kind then
      items = items + 1
    end
  end
  if items > max_items then
    return -2
  end
end
redis.call('RPUSH', queue_key, task_json)
redis.call('EXPIRE', queue_key, ttl)
redis.call('ZADD', pool_tasks_key, 'NX', now, hostname)
redis.call('LPUSH', wake_key, '1')
redis.call('LTRIM', wake_key, 0, 0)
redis.call('EXPIRE', wake_key, 60)
return 1
