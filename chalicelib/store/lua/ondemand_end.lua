-- End an on-demand request (deleted by its user, or failed) and send every VM it still holds,
-- building or delivered, to completed to be destroyed. A ready request cannot fail, only be
-- deleted; ending an ended request changes nothing. The pools' reconciles are nudged to
-- destroy the VMs at once.
-- A VM whose clone may be running in the provider (its start claimed, lua/ondemand_claim.lua, or
-- its task recorded) keeps its place in the cloning set, marked 'clone_held': it still counts
-- against ondemand_clone_limit until the completed step sees its clone end (manager/completed.py),
-- so a caller that creates and deletes requests in a loop never has more clones running than the
-- limit. A VM reserved whose start no pass has claimed yet is never cloned (the claim refuses it
-- from now on), nor one claimed and not yet marked 'clone_asked' when its record says its
-- reserver marks before cloning ('marks_asked': lua/clone_asked.lua refuses the mark from now
-- on; an older version's reservation may still be cloned unmarked, so it is held): either leaves
-- every set at once, destroyed, its record kept unused_record_ttl.
-- KEYS[1] the request, KEYS[2] its VMs, KEYS[3] the cloning set, KEYS[4] the service's open
-- requests (keys.ondemand_open_requests), KEYS[5] the service's running set (keys.running),
-- KEYS[6] the cloning set's pools' own part (keys.pool_clones: a request's VM is never there;
-- taken out all the same, so no path leaves a VM counted there once it stops cloning), KEYS[7]
-- the sum of the open requests' scores (keys.ondemand_open_waiting: lua/open_waiting.lua), KEYS[8]
-- the service's kept requests (keys.ondemand_kept_requests).
-- ARGV: request id, new state ("deleted"|"failed"), message, now, VM reason, record ttl, then the
-- templates of the keys named by the request and its VMs' records (keys.DERIVED_KEYS):
-- open_template, wake_template, vm_template, pending_template, running_template, completed_template,
-- running_due_template (a VM taken out of running leaves its pool's running_due set in this step,
-- as lua/move.lua's do: no pass has anything more to look at); then the index in KEYS of the
-- record of the token the end was asked with (0 for none:
-- lua/token_live.lua); then, when the API ends a request it read (DELETE /ondemandvm/<id>), that
-- request's 'created' and 'token_user' as it read them ('' and '' for no such check); then the
-- ttl of the record of a VM reserved and never cloned (store.UNUSED_RECORD_TTL_SECONDS); then the
-- templates of an owner's holdings and requests sets (keys.holdings, keys.owner_requests): the
-- sets that count the request are kept as long as it now answers (lua/request_sets.lua), past
-- their own expiry when it was nearer. Then, when a pass ends the request for a failure of one of
-- its VMs (manager/ondemand.clone_failed), that VM's hostname ('' for no such check): a request
-- under the id whose VMs do not include it is not the one the pass read the VM of (that one ended
-- and was forgotten since, and a new request took its id), and is left as it is: "missing".
-- Returns JSON {"result": "ended"|"already"|"missing"|"token_gone", "state": ..., "pools": [...]}
-- ("token_gone": the token was deleted since the API checked it; nothing changed). "missing" too
-- when the request under that id is not the one the API read: that one was forgotten (the service
-- keeps its newest only; a record's time to live ends) and another caller's new request took its
-- id since, which the API checked nobody's ownership of.
local key, vms_key, cloning_key = KEYS[1], KEYS[2], KEYS[3]
local all_running_key, pool_clones_key = KEYS[5], KEYS[6]
local id, new_state, message, now, reason, ttl =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local open_template, wake_template, vm_template = ARGV[7], ARGV[8], ARGV[9]
local state_templates = {pending = ARGV[10], running = ARGV[11], completed = ARGV[12]}
local running_due_template = ARGV[13]
if token_gone(ARGV[14]) then
  return cjson.encode({result = 'token_gone', state = '', pools = {}})
end
local request = redis.call('HMGET', key, 'state', 'entries', 'created', 'token_user', 'holdings')
local state = request[1]
local seen_created, seen_user = ARGV[15] or '', ARGV[16] or ''
local unused_ttl = math.min(tonumber(ARGV[17]), ttl)
-- A 'created' unreadable (by hand) reads as 0, as the API reads it (float of nothing).
if not state or (seen_created ~= '' and ((finite(request[3]) or 0) ~= (finite(seen_created) or 0)
    or (request[4] or '') ~= seen_user))
    or ((ARGV[20] or '') ~= '' and not redis.call('ZSCORE', vms_key, ARGV[20])) then
  return cjson.encode({result = 'missing', state = '', pools = {}})
end
if state == 'deleted' or state == 'failed' or (new_state == 'failed' and state ~= 'open') then
  return cjson.encode({result = 'already', state = state, pools = {}})
end
redis.call('HSET', key, 'state', new_state, 'message', message, 'ended_at', now)
open_request_close(4, 7, id)
local pools = {}
for _, entry in ipairs(cjson.decode(request[2])) do
  redis.call('ZREM', key_of(open_template, entry.pool), id)
  pools[#pools + 1] = entry.pool
  local wake_key = key_of(wake_template, entry.pool)
  redis.call('LPUSH', wake_key, '1')
  redis.call('LTRIM', wake_key, 0, 0)
  redis.call('EXPIRE', wake_key, 60)
end
for _, hostname in ipairs(redis.call('ZRANGE', vms_key, 0, -1)) do
  local vm_key = key_of(vm_template, hostname)
  local vm = redis.call('HMGET', vm_key, 'request', 'pool', 'clone_claimed', 'clone_task', 'marks_asked',
    'clone_asked')
  if vm[1] == id then
    for _, from in ipairs({'pending', 'running'}) do
      if redis.call('ZREM', key_of(state_templates[from], vm[2]), hostname) == 1 then
        local cloning = redis.call('ZSCORE', cloning_key, hostname)
        redis.call('ZREM', pool_clones_key, hostname)
        redis.call('ZREM', all_running_key, hostname)
        if from == 'running' then
          redis.call('ZREM', key_of(running_due_template, vm[2]), hostname)
        end
        -- Reserved, never to be cloned: unclaimed, or claimed and not yet marked asked by a
        -- version that clones only what it marked (the mark is refused from now on).
        if cloning and not vm[4] and (not vm[3] or (vm[5] and not vm[6])) then
          redis.call('ZREM', cloning_key, hostname)
          redis.call('HSET', vm_key, 'state', 'destroyed', 'destroyed_at', now, 'reason', reason)
          redis.call('EXPIRE', vm_key, unused_ttl)
        else
          if cloning then -- its clone may run: its slot stays taken until the clone ends
            redis.call('HSET', vm_key, 'clone_held', now)
          end
          redis.call('ZADD', key_of(state_templates.completed, vm[2]), now, hostname)
          redis.call('HSET', vm_key, 'state', 'completed', 'completed_at', now, 'reason', reason)
        end
        break
      end
    end
  end
end
redis.call('EXPIRE', key, ttl)
redis.call('EXPIRE', vms_key, ttl)
keep_counting(request[5], ttl, 8, ARGV[18], ARGV[19])
return cjson.encode({result = 'ended', state = new_state, pools = pools})
