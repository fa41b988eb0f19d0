-- A time or figure of a record as a finite number; nil when absent or unreadable (text, or nan or
-- inf written by hand or a bug), as store.records.finite_number reads it. Lua's tonumber reads
-- 'nan', 'inf' and '-inf' as numbers, and every comparison with nan is false.
local function finite(text)
  local number = tonumber(text or '')
  if number and number == number and number > -math.huge and number < math.huge then
    return number
  end
  return nil
end
