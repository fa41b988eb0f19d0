-- Settle a change whose answer was lost (store/settle.py): the mark its script left in the step
-- that made it ('done', or the answer it kept: lua/pool_overrides.lua), or 'done' when KEYS[2],
-- when given, exists (a token's record, whose random name only that script could have written);
-- else mark it 'void', so that the script, should it reach Redis later (written before the
-- connection failed, waiting behind a slow script), makes nothing, and return 'void'. One step:
-- the script and this cannot both win.
-- KEYS[1] the change's settled mark, KEYS[2] (optional) what the change makes; ARGV[1] seconds
-- the mark lives.
local found = redis.call('GET', KEYS[1])
if found then
  return found
end
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then
  return 'done'
end
redis.call('SET', KEYS[1], 'void', 'EX', ARGV[1])
return 'void'
