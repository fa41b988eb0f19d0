-- How many of the pools' pending VMs are in the cloning set (their clone still runs): the rest of
-- them are booting. Held clones (a VM taken out of service mid-clone keeps its place in the
-- cloning set from completed: lua/move.lua, lua/ondemand_end.lua) are not pending, so the cloning
-- set's size alone says nothing of how many pending VMs boot.
-- KEYS[1] the cloning set, then the pools' pending sets. Answers the count.
local count = 0
for index = 2, #KEYS do
  count = count + redis.call('ZINTERCARD', 2, KEYS[index], KEYS[1])
end
return count
