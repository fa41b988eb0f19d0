-- A user's change to a VM (PUT /vm/<host>): set each field on its own, in one step, so two
-- changes at once both land (no read-modify-write of a shared blob), and only while the record
-- exists. Tags are fields 'tag:<key>'; at most ARGV[1] of them per VM.
-- KEYS[1] the VM's record; ARGV[1] most tags a VM may carry; ARGV[2..] field, value, ...
-- Returns 1 when changed, 0 when there is no record, -1 when the VM would carry too many tags
-- (then nothing changed).
local key, max_tags = KEYS[1], tonumber(ARGV[1])
if redis.call('EXISTS', key) == 0 then
  return 0
end
local new_tags = 0
for i = 2, #ARGV, 2 do
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
for i = 2, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
return 1
