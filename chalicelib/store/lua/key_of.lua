-- Prepended to the scripts of store/keys.py's DERIVED_KEYS only: they alone may name a key they
-- were not given, and only from a template the caller built with store/keys.py (KEY_PART, a NUL,
-- where the part read inside the script goes).
local function key_of(template, part)
  local at = string.find(template, '\0', 1, true)
  return string.sub(template, 1, at - 1) .. part .. string.sub(template, at + 1)
end
