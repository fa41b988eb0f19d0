-- Shared by move.lua and update.lua (prepended to them when they are loaded).

-- Write the field, value pairs ARGV[from..to] onto the record vm_key after the pairs already in
-- `set` (the caller's value wins, as when each was set in turn): one HSET, then one HDEL of the
-- fields whose value is empty.
local function write_fields(vm_key, set, from, to)
  local deleted = {}
  for i = from, to, 2 do
    if ARGV[i + 1] == '' then
      deleted[#deleted + 1] = ARGV[i]
    else
      set[#set + 1] = ARGV[i]
      set[#set + 1] = ARGV[i + 1]
    end
  end
  if #set > 0 then
    redis.call('HSET', vm_key, unpack(set))
  end
  if #deleted > 0 then
    redis.call('HDEL', vm_key, unpack(deleted))
  end
end
