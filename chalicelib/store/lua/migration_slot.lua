-- Take one of the service-wide migration slots for a checked-out VM, if one is free.
-- KEYS[1] migrating (zset: hostname -> start time), KEYS[2] the VM's record.
-- ARGV[1] hostname, ARGV[2] migration_limit, ARGV[3] now, ARGV[4] forget slots started before this,
-- ARGV[5] the process taking it, which starts the move (store/leases.py holder_label): a restarted
-- local stack knows one its dead predecessor took (manager/migrations.abandon_unstarted),
-- ARGV[6] the deadline (ms of Redis's clock, '' none: store/deadline.py).
-- Returns 'started' (slot taken; the record says migration=started), 'limit' (all slots busy, or
-- run past the deadline: the VM stays queued), or 'gone' (the VM is no longer running or no
-- longer queued for migration).
-- Run past its deadline (Redis frozen past the caller's socket timeout: its pass gave up and
-- sends no move) it takes no slot: one taken then held a service-wide slot, and its VM, for the
-- start grace (manager/migrations.py MIGRATION_START_GRACE_SECONDS) while other VMs waited.
local migrating, record = KEYS[1], KEYS[2]
local hostname, limit, now, stale_before, taker = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if past_deadline(ARGV[6]) then
  return 'limit'
end
-- A slot whose pass died and whose VM left every pool would otherwise be held forever.
redis.call('ZREMRANGEBYSCORE', migrating, '-inf', '(' .. stale_before)
local state, migration = unpack(redis.call('HMGET', record, 'state', 'migration'))
if state ~= 'running' or migration ~= 'queued' then
  return 'gone'
end
if redis.call('ZSCORE', migrating, hostname) == false and redis.call('ZCARD', migrating) >= limit then
  return 'limit'
end
redis.call('ZADD', migrating, now, hostname)
redis.call('HSET', record, 'migration', 'started', 'migration_started', now, 'migration_taker', taker)
-- The target is noted by the pass before it sends the move (manager/migrations.py): none yet.
redis.call('HDEL', record, 'migration_to')
return 'started'
