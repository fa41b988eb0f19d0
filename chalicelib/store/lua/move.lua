-- Move VMs from one state to another, each only if it is still in the state the caller saw.
-- This is what keeps a pass from reaping a VM that was checked out after it looked.
-- KEYS: the VMs' records, one per VM; then the changes counter, the cloning set, its pools' own
-- part (keys.pool_clones: reserve_clones.lua), the service's running set (keys.running) and,
-- when the caller knows the pool, the pool's from_state set, its to_state set, its wake list and
-- its running_due set; then the destroyed set (keys.destroyed); then the hashes of settings_read
-- (below), when given.
-- A VM moved to running joins the service's running set; one moved to any other state leaves it
-- (whatever it left: a VM is in one state, so one not running is never counted). One moved out
-- of running leaves its pool's running_due set too (leave_running_due): a pass has nothing more
-- to look at there (a VM dropped as gone from the provider would otherwise keep its entry until
-- its lifetime's end, long after its record expired).
-- ARGV: to_state, now, record_ttl_seconds, nudge, unchanged_since, lifetime_ended,
--       from_template, to_template, wake_template, same_checkout, checkout, token_user, token,
--       unused_record_ttl_seconds, leave_running_due, hold_clone, records_kept, vm_template
--       (to_state destroyed; '' otherwise), settings_read (a count n, then n pairs field,
--       value), then per VM: its hostname, how many fields follow, and those fields as
--       field, value, ...
-- to_state "destroyed" takes the VM out of every set and lets its record expire after the ttl;
--   after unused_record_ttl_seconds instead for a VM cloned for an on-demand request and never
--   delivered (a 'request' but no 'checkout': no one ever held it; a request deleted mid-build)
--   whose DNS record is gone (no 'dns_name' left for manager/dns_records.py to delete). Every
--   other joins the destroyed set; past records_kept, the records of those destroyed longest ago
--   (a few more than this call added, so any excess goes) expire within unused_record_ttl_seconds,
--   but one whose DNS record is still to delete, or whose name a new VM took (not destroyed).
--   Those of VMs no one held (no 'checkout') go first: recycled ready VMs never push out the
--   record of a VM someone held while one of theirs is left.
-- nudge "1" wakes the pool's reconcile (a move made by the API, such as returning a VM).
-- The templates ('' when the pool's keys are given) name those three keys for the pool its record
--   names (DELETE /vm/<hostname>: one VM, one round trip, no read first; see keys.DERIVED_KEYS).
-- leave_running_due (from_state running only; '' otherwise): '1' when the pool's keys are given,
--   else the template of the pool's running_due set.
-- hold_clone ('1' or ''; to_state completed): a VM still in the cloning set, whose clone may still
--   run in the provider (a pool's pending VM drained mid-clone: manager/pool_changes.py), keeps
--   its place there and in pool_clones, marked 'clone_held', as lua/ondemand_end.lua keeps a
--   request's (unless never to be cloned: never_cloned below, its slot freed at once): it counts
--   against task_limit until the completed step sees its clone end
--   (manager/completed.clones_still_running), which frees the slot and only then destroys it.
-- unchanged_since (a mark of the changes counter, or ''): move only if the VM's state has not
--   changed since the mark. A pass takes the mark before reading the provider's inventory, so
--   "gone from the provider" is believed only of a VM that was already in its state when the
--   inventory was read, never of one made ready or checked out after a stale read.
-- lifetime_ended (the default lifetime in hours, or ''): move only if the VM's checkout time plus
--   its lifetime, as recorded now (a PUT may have extended it since the pass looked), is past now.
--   A checkout time unreadable in Redis counts from when the VM entered from_state (its score
--   there), as manager/running.py does; without either the lifetime never ends.
-- same_checkout ('1' or ''): move only if the VM's 'checkout' and 'token_user' fields are still
--   checkout and token_user ('' for none): the checkout whose owner the caller checked (DELETE
--   /vm/<host> with :auth:), not one that took the VM since (lua/vm_owner.lua). Its state is
--   from_state's set's to check, and an unconfirmed checkout may be returned.
-- token (the index in KEYS of the record of the token the move was asked with, or 0 for none:
--   lua/token_live.lua): when the token was deleted since the API checked it, nothing moves and
--   every VM's answer is -1.
-- settings_read (n pairs after the count; n is 0 for none): move only while each of the n hashes
--   given after the pool's keys (KEYS[vms + 10 ...], after the destroyed set) holds that value in
--   that field ('' for none). A pair whose field is '' compares the key's own value (a string:
--   the pool's lease, held by the caller's run: manager/pending.py frees a clone another run
--   reserved and never asked only while its own run holds the pool).
--   The pending step moves a VM to ready only while the pool's template and reset are still those
--   its pass read: a pass that read them before a change would make a VM of the old template ready
--   after the change, maybe after a newer pass had drained the pool and lifted the change's fence
--   on its ready VMs (store/pool_overrides.py); left pending, it is drained by the next pass.
-- A field's empty value deletes it. Every move stamps the VM with the counter's value (change_seq).
-- Each VM is checked on its own, as if moved alone; one call for many saves their round trips and
-- their share of the work (one script run, the counter read once, one HSET per record).
-- Returns per VM 1 (or, when the pool came from the record, the pool's name) when moved, 0 when
-- the VM was no longer in from_state or a condition did not hold.
local to_state, now, ttl, nudge, unchanged_since, lifetime_ended =
  ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local firsts = {} -- where each VM's arguments begin
local same_checkout, seen_checkout, seen_owner = ARGV[10] == '1', ARGV[11], ARGV[12]
local unused_ttl = tonumber(ARGV[14])
local hold_clone = ARGV[16] == '1' and to_state == 'completed'
local records_kept, vm_template = tonumber(ARGV[17]), ARGV[18]
local settings_read = tonumber(ARGV[19])
local next_first = 20 + 2 * settings_read
while next_first <= #ARGV do
  firsts[#firsts + 1] = next_first
  next_first = next_first + 2 + 2 * tonumber(ARGV[next_first + 1])
end
local vms = #firsts
local changes_key, cloning_key, pool_clones_key, all_running_key =
  KEYS[vms + 1], KEYS[vms + 2], KEYS[vms + 3], KEYS[vms + 4]
local change_seq = nil
local kept_added = 0 -- VMs this call added to the destroyed set
local NEVER_HELD_OFFSET = 1e10 -- about 317 years: below every score of a VM someone held

-- Whether the VM, leaving pending now, is never to be cloned: reserved by a version that asks
-- for a clone only once marked 'clone_asked' (its 'marks_asked': store/records.py MARKS_ASKED),
-- it has neither the mark (refused from now on: lua/clone_asked.lua) nor a task.
local function never_cloned(vm_key)
  local record = redis.call('HMGET', vm_key, 'marks_asked', 'clone_asked', 'clone_task')
  return record[1] and not record[2] and not record[3]
end

local function move(index)
  local first = firsts[index]
  local vm_key, hostname = KEYS[index], ARGV[first]
  local from_key, to_key, wake_key, running_due_key = KEYS[vms + 5], KEYS[vms + 6], KEYS[vms + 7], KEYS[vms + 8]
  local leave_running_due = ARGV[15] ~= ''
  local moved = 1
  if ARGV[7] ~= '' then
    local pool = redis.call('HGET', vm_key, 'pool')
    if not pool then
      return 0
    end
    moved = pool
    from_key = key_of(ARGV[7], pool)
    to_key = key_of(ARGV[8], pool)
    wake_key = key_of(ARGV[9], pool)
    if leave_running_due then
      running_due_key = key_of(ARGV[15], pool)
    end
  end
  if unchanged_since ~= '' and redis.call('ZSCORE', from_key, hostname) then
    -- A stamp broken in Redis (text, nan, inf) reads as never stamped, as context.drop reads it.
    local changed = finite(redis.call('HGET', vm_key, 'change_seq')) or 0
    if changed >= tonumber(unchanged_since) then
      return 0
    end
  end
  local entered = lifetime_ended ~= '' and redis.call('ZSCORE', from_key, hostname)
  if entered then
    local record = redis.call('HMGET', vm_key, 'checkout', 'lifetime')
    local lifetime = math.floor(tonumber(record[2] or '') or 0)
    if not (lifetime > 0) then -- nan too
      lifetime = tonumber(lifetime_ended)
    end
    -- The lifetime counts from the checkout; from the time the VM entered from_state (its score)
    -- when the checkout time is unreadable; never ends when neither is readable.
    local started = finite(record[1]) or finite(entered) or tonumber(now)
    if tonumber(now) - started < lifetime * 3600 then
      return 0
    end
  end
  if same_checkout and not held_by_checkout(index, seen_checkout, seen_owner, false) then
    return 0
  end
  if redis.call('ZREM', from_key, hostname) == 0 then
    return 0
  end
  local held = false
  if hold_clone and redis.call('ZSCORE', cloning_key, hostname) and not never_cloned(vm_key) then
    held = true -- its clone may still run: its slot stays taken until the clone ends
  elseif redis.call('ZREM', cloning_key, hostname) == 1 then -- pool_clones holds only VMs cloning
    redis.call('ZREM', pool_clones_key, hostname)
  end
  if to_state == 'running' then
    redis.call('ZADD', all_running_key, now, hostname)
  else
    redis.call('ZREM', all_running_key, hostname)
    if leave_running_due then
      redis.call('ZREM', running_due_key, hostname)
    end
  end
  change_seq = change_seq or redis.call('GET', changes_key) or '0'
  local own = {'state', to_state, to_state .. '_at', now, 'change_seq', change_seq}
  if held then
    own[#own + 1], own[#own + 2] = 'clone_held', now
  end
  write_fields(vm_key, own, first + 2, first + 1 + 2 * tonumber(ARGV[first + 1]))
  if to_state == 'destroyed' then
    local record = redis.call('HMGET', vm_key, 'request', 'checkout', 'dns_name')
    if record[1] and not record[2] and not record[3] then
      redis.call('EXPIRE', vm_key, math.min(ttl, unused_ttl))
    else
      redis.call('EXPIRE', vm_key, ttl)
      -- The trim below takes the lowest scores first: a VM no one held (no 'checkout': a ready VM
      -- past ready_ttl, reset or replaced, a failed clone) is scored NEVER_HELD_OFFSET seconds
      -- earlier, so its record goes before any of a VM someone held (a checkout, an on-demand
      -- delivery), in the order they were destroyed.
      local score = tonumber(now)
      if not record[2] then
        score = score - NEVER_HELD_OFFSET
      end
      redis.call('ZADD', KEYS[vms + 9], score, hostname)
      kept_added = kept_added + 1
    end
  else
    redis.call('ZADD', to_key, now, hostname)
  end
  if nudge == '1' then
    redis.call('LPUSH', wake_key, '1')
    redis.call('LTRIM', wake_key, 0, 0)
    redis.call('EXPIRE', wake_key, 60)
  end
  return moved
end

-- Whether a setting read by the caller has changed since (see settings_read): then nothing moves.
local function settings_changed()
  for i = 1, settings_read do
    local key, field = KEYS[vms + 9 + i], ARGV[18 + 2 * i]
    local value
    if field == '' then
      value = redis.call('GET', key)
    else
      value = redis.call('HGET', key, field)
    end
    if (value or '') ~= ARGV[19 + 2 * i] then
      return true
    end
  end
  return false
end

local results = {}
local gone = token_gone(ARGV[13])
local changed = not gone and settings_changed()
for index = 1, vms do
  if gone then
    results[index] = -1
  elseif changed then
    results[index] = 0
  else
    results[index] = move(index)
  end
end
-- The destroyed set past records_kept: the oldest records expire within the hour (an hour
-- outlives any pass, so one whose inventory predates the destroy still finds 'destroyed_at').
if kept_added > 0 then
  local destroyed_key = KEYS[vms + 9]
  redis.call('EXPIRE', destroyed_key, ttl)
  local excess = math.min(redis.call('ZCARD', destroyed_key) - records_kept, kept_added + 8)
  if excess > 0 then
    for _, hostname in ipairs(redis.call('ZRANGE', destroyed_key, 0, excess - 1)) do
      local vm_key = key_of(vm_template, hostname)
      local record = redis.call('HMGET', vm_key, 'state', 'dns_name')
      if record[1] == 'destroyed' and not record[2] and redis.call('TTL', vm_key) > unused_ttl then
        redis.call('EXPIRE', vm_key, unused_ttl)
      end
      redis.call('ZREM', destroyed_key, hostname)
    end
  end
end
return results
