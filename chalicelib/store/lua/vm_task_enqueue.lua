-- Queue a disk/snapshot task on a checked-out VM (POST /vm/<host>/disk/<gb>, .../snapshot...),
-- within its bounds, and nudge its pool's reconcile, in one step: concurrent requests cannot
-- pass a bound together, and a VM returned (or checked out again) since the API checked who may
-- change it gets nothing. The task and its bounds: lua/vm_task_queue.lua.
-- KEYS[1] the VM's record, KEYS[2..5] the task's keys (named in the queue by their index);
-- ARGV[1] the queue (JSON), ARGV[2] the record's 'checkout' field as the API read it, ARGV[3] the
-- index in KEYS of the record of the token the task was asked with (0 for none: lua/token_live.lua),
-- ARGV[4] the record's 'token_user' as the API read it ('' for none): its owner was checked, and
-- the same name checked out again (by someone else, maybe at the same time) is not that checkout.
-- Returns 1 when queued, 0 when the VM is no longer running for that checkout (or that checkout
-- was never confirmed), -1 when its queue is full, -2 when the list would pass its bound, -3 when
-- the token was deleted since the API checked it, -4 when the request reached Redis past its
-- deadline or after the API settled it as not made (lua/vm_task_queue.lua; nothing changed
-- either way).
local vm_key, queue, checkout = KEYS[1], cjson.decode(ARGV[1]), ARGV[2]
if token_gone(ARGV[3]) then
  return -3
end
if not held_by_checkout(1, checkout, ARGV[4], true) then
  return 0
end
local refusal = task_refusal(queue)
if refusal == 'late' then
  return -4
elseif refusal == 'queue_full' then
  return -1
elseif refusal == 'list_full' then
  return -2
end
task_push(queue)
return 1
