-- Set fields on a VM's record only if the record still exists (never leave a fragment behind).
-- KEYS[1] the record; ARGV: field, value, ... (an empty value deletes the field).
-- Returns 1 when updated, 0 when there was no record.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
