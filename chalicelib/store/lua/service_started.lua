-- Record when the service started serving unless it is known (a finite number of epoch seconds:
-- one written broken by hand or a bug is replaced). /status's uptime counts from it, the same
-- from every process (each counted its own: the uptime jumped between workers and Lambda
-- instances). Set by the scheduler's tick; the local stack sets it as it starts, before its
-- workers (store.restart_service).
-- KEYS[1] the service's start (keys.started); ARGV[1] now. Returns 1 when set.
if finite(redis.call('GET', KEYS[1])) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
