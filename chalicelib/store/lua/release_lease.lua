-- Release or extend a lease only if we still hold it (a lease that expired may be someone else's now).
-- KEYS[1] lease key; ARGV[1] holder token; ARGV[2] milliseconds to extend, or 0 to release.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('DEL', KEYS[1])
