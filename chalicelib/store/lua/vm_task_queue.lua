-- Shared by vm_task_enqueue.lua and vm_modify.lua (prepended to them when they are loaded): a
-- disk/snapshot/revert task queued on a checked-out VM, within its bounds, and its pool nudged.
-- 'queue' (decoded from the JSON the store passes) holds the task's KEYS indexes 'tasks' (the
-- VM's task queue), 'pool_tasks' (its pool's set of VMs with tasks), 'wake' (the pool's wake
-- list) and 'settled' (the request's settled mark: store/settle.py); and 'hostname', 'now', 'task' (JSON text), 'ttl' (the queue's, seconds), 'max_queued'
-- (most tasks waiting), 'list_field' (the record's list the task adds to, 'disks' or
-- 'snapshots'; '' for none), 'max_items' (most items that list may reach, counting the
-- tasks in flight and queued that add to it), 'deadline' (ms of Redis's clock, '' for none:
-- Store.answer_deadline) after which the API has given up on the answer and said it failed, and
-- 'settled_ttl' (seconds the settled mark lives).

-- Nil when the task fits its bounds on the VM's record (KEYS[1] of both scripts); else
-- 'late' (the request waited in Redis, paused or behind a slow script, past its deadline: its
-- caller was answered 503, and a task queued now would be queued again by the retry the 503
-- asks for: a second disk; or the API, its answer lost, settled the request as not made, and
-- answered 503), 'queue_full' or 'list_full'.
local function task_refusal(queue)
  if past_deadline(queue.deadline) or redis.call('EXISTS', KEYS[queue.settled]) == 1 then
    return 'late'
  end
  local queued = redis.call('LRANGE', KEYS[queue.tasks], 0, -1)
  if #queued >= queue.max_queued then
    return 'queue_full'
  end
  if queue.list_field == '' then
    return nil
  end
  local seen = redis.call('HMGET', KEYS[1], 'task', queue.list_field)
  local kind = cjson.decode(queue.task).kind
  local items = 1
  if seen[2] and seen[2] ~= '' then
    items = items + #cjson.decode(seen[2])
  end
  if seen[1] and cjson.decode(seen[1]).kind == kind then
    items = items + 1
  end
  for _, raw in ipairs(queued) do
    if cjson.decode(raw).kind == kind then
      items = items + 1
    end
  end
  if items > queue.max_items then
    return 'list_full'
  end
  return nil
end

-- Queue the task (checked by task_refusal) and nudge the VM's pool's reconcile; mark the request
-- settled as done, for the API to find should this script's answer be lost (store/settle.py).
local function task_push(queue)
  redis.call('SET', KEYS[queue.settled], 'done', 'EX', queue.settled_ttl)
  redis.call('RPUSH', KEYS[queue.tasks], queue.task)
  redis.call('EXPIRE', KEYS[queue.tasks], queue.ttl)
  redis.call('ZADD', KEYS[queue.pool_tasks], 'NX', queue.now, queue.hostname)
  redis.call('LPUSH', KEYS[queue.wake], '1')
  redis.call('LTRIM', KEYS[queue.wake], 0, 0)
  redis.call('EXPIRE', KEYS[queue.wake], 60)
end
