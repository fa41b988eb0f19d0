-- Prepended to the scripts of store/keys.py's DERIVED_KEYS only: they alone may name a key they
-- were not given, and only from a template the caller built with store/keys.py (KEY_PART, a NUL,
-- where the part read inside the script goes).
local function key_of(template, part)
  local at = string.find(template, '\0', 1, true)
  return string.sub(template, 1, at - 1) .. part .. string.sub(template, at + 1)
end

-- The key part of an on-demand request's id: store/keys.py's request_part, the same rule.
local function request_part(id)
  if id == 'open' or string.find(id, ':', 1, true) then
    return '~' .. (string.gsub(id, ':', '|'))
  end
  return id
end
