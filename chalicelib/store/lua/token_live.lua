-- Shared by the scripts that make a change a token asked for (scripts.SHARED): whether that
-- token is gone. The API checked the token before the script ran, but DELETE /token/<t> (or its
-- expiry) may have come in between: once the delete has answered, no change the token asked for
-- may land (docs/auth.md). 'index' is the token record's index in KEYS; 0 or nil: the change was
-- asked without a token.
local function token_gone(index)
  local at = tonumber(index) or 0
  return at > 0 and redis.call('EXISTS', KEYS[at]) == 0
end
