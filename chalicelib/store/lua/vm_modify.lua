-- A user's change to a VM (PUT /vm/<host>): set each field on its own, in one step, so two
-- changes at once both land (no read-modify-write of a shared blob), and only while the VM is
-- still checked out by the checkout the API looked at (its ownership was checked against that
-- one: a VM returned, or handed to someone else, meanwhile is not changed: lua/vm_owner.lua). Tags are fields
-- 'tag:<key>'; at most ARGV[1] of them per VM. Their names, in the order each was first set, are
-- the field 'tag_order' (a JSON list): GET /vm answers the tags in that order, as vmpooler does,
-- whatever order Redis keeps the fields in (a hash table's once a field is over 64 bytes: a task
-- in flight, two snapshots). A disk asked for in the same PUT is queued in the
-- same step (lua/vm_task_queue.lua): the fields and the disk land together or not at all, so a
-- request killed or refused half way leaves no disk queued without the rest. The tags are
-- counted in the day's tag statistics (lua/tag_stats.lua) in the same step too, each only when
-- it changes the VM's tag: a change that fails changes no statistic, and a retry of a change
-- whose answer was lost (the same tags set again) counts nothing twice.
-- KEYS[1] the VM's record, KEYS[2] its pool's running_due set, KEYS[3] the day's tag hash,
-- KEYS[4] the day's durations hash, KEYS[5..8] the task's keys when one is queued; ARGV[1] most
-- tags a VM may carry, ARGV[2] the VM's name, ARGV[3] now, ARGV[4] the record's 'checkout'
-- field as the API read it, ARGV[5] its 'token_user' ('' for none), ARGV[6] the task's queue
-- (JSON; '' for none), ARGV[7] the index in KEYS of the record of the token the change was asked
-- with (0 for none: lua/token_live.lua), ARGV[8] the tag statistics' bounds (JSON: 'ttl',
-- 'max_names', 'max_values'), ARGV[9] the index in KEYS of the record of the on-demand request
-- the VM was delivered to (0 for none; its VM set right after it, then the sets that count the
-- request toward the bounds on kept requests, to the last key: the service's kept set and its
-- owner's requests set, lua/ondemand_create.lua), ARGV[10] the seconds from now
-- that request must answer once the new lifetime holds (data_ttl past the VM's new end),
-- ARGV[11..] field, value, ...
-- A lifetime change of a VM of a ready request pushes the request's expiry, and its VM set's,
-- out to that (never in: EXPIRE GT), so the request outlives its VMs (lua/ondemand_deliver.lua),
-- and the sets that count it as long (never in either): a lifetime of years (no
-- max_lifetime_upper_limit) kept it past them, counted by nothing.
-- Returns 1 when changed, 0 when the VM is no longer running for that checkout (or that checkout
-- was never confirmed), -1 when the VM would carry too many tags, -2 when its task queue is
-- full, -3 when the task's list would pass its bound, -4 when the token was deleted since the
-- API checked it, -5 when a change queueing a task reached Redis past its deadline or after the
-- API settled it as not made (lua/vm_task_queue.lua; nothing changed either way).
local key, max_tags = KEYS[1], tonumber(ARGV[1])
local first_field = 11
if token_gone(ARGV[7]) then
  return -4
end
if not held_by_checkout(1, ARGV[4], ARGV[5], true) then
  return 0
end
local new_tags = 0
for i = first_field, #ARGV, 2 do
  if string.sub(ARGV[i], 1, 4) == 'tag:' and redis.call('HEXISTS', key, ARGV[i]) == 0 then
    new_tags = new_tags + 1
  end
end
if new_tags > 0 then
  local tags = 0
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, 4) == 'tag:' then
      tags = tags + 1
    end
  end
  if tags + new_tags > max_tags then
    return -1
  end
end
local queue = nil
if ARGV[6] ~= '' then
  queue = cjson.decode(ARGV[6])
  local refusal = task_refusal(queue)
  if refusal == 'late' then
    return -5
  elseif refusal == 'queue_full' then
    return -2
  elseif refusal == 'list_full' then
    return -3
  end
end
local lifetime_changed, counted, tag_order = false, {}, nil
for i = first_field, #ARGV, 2 do
  if string.sub(ARGV[i], 1, 4) == 'tag:' then
    local was = redis.call('HGET', key, ARGV[i])
    if was ~= ARGV[i + 1] then
      counted[#counted + 1] = string.sub(ARGV[i], 5)
      counted[#counted + 1] = ARGV[i + 1]
    end
    if not was then
      if not tag_order then
        local ok, listed = pcall(cjson.decode, redis.call('HGET', key, 'tag_order') or '[]')
        tag_order = (ok and type(listed) == 'table') and listed or {}
      end
      tag_order[#tag_order + 1] = string.sub(ARGV[i], 5)
    end
  end
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  lifetime_changed = lifetime_changed or ARGV[i] == 'lifetime'
end
if tag_order then
  redis.call('HSET', key, 'tag_order', cjson.encode(tag_order))
end
if lifetime_changed then
  -- A running VM's next look was scheduled at its old end: bring it to now, so a shortened
  -- lifetime ends on time (the pass schedules the next look from the new lifetime). XX: only a
  -- VM a pass looks after (running); LT: never later than already due.
  redis.call('ZADD', KEYS[2], 'XX', 'LT', ARGV[3], ARGV[2])
end
local request_index, request_kept = tonumber(ARGV[9]), tonumber(ARGV[10])
if lifetime_changed and request_index > 0 and request_kept > 0 then
  local request_key, request_vms_key = KEYS[request_index], KEYS[request_index + 1]
  if redis.call('HGET', request_key, 'state') == 'ready' and redis.call('ZSCORE', request_vms_key, ARGV[2]) then
    redis.call('EXPIRE', request_key, request_kept, 'GT')
    redis.call('EXPIRE', request_vms_key, request_kept, 'GT')
    for i = request_index + 2, #KEYS do
      redis.call('EXPIRE', KEYS[i], request_kept, 'GT')
    end
  end
end
if queue then
  task_push(queue)
end
if #counted > 0 then
  local stats = cjson.decode(ARGV[8])
  stats.key, stats.durations = 3, 4
  count_tags(stats, counted)
end
return 1
