-- Set one field on a VM's record unless it is already set (or the record is gone): the first
-- caller wins, so a notice tied to the field is given once even when passes race.
-- KEYS[1] the record; ARGV[1] field, ARGV[2] value. Returns 1 when this call set it.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
