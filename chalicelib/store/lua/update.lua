-- Set fields on VMs' records, each only if its record still exists (never leave a fragment behind).
-- KEYS: the records; ARGV: per record, how many fields follow, then field, value, ... (an empty
-- value deletes the field).
-- Returns per record 1 when updated, 0 when there was no record.
local results, first = {}, 1
for index, vm_key in ipairs(KEYS) do
  local last = first + 2 * tonumber(ARGV[first])
  results[index] = redis.call('EXISTS', vm_key)
  if results[index] == 1 then
    write_fields(vm_key, {}, first + 1, last)
  end
  first = last + 1
end
return results
