-- Set token records' expiries for the token_ttl in effect (auth/tokens.py align_expiries), but a
-- pending record's (lua/token_create.lua, not yet counted by lua/token_confirm.lua: a login that
-- failed left it, known to nobody) to no more than what is left of its pending life, whatever
-- token_ttl is (none included): given the ttl's, an orphan nobody holds lived on as long as a
-- token, or for ever. Whether a record is pending is read here, in the step that sets its
-- expiry: one counted since the caller read it (its first use) gets the ttl's.
-- KEYS the token records; ARGV for each, in order: the seconds until it expires under the ttl
-- ('0': it does not), then the most seconds it may live while pending.
-- Returns how many records it set (those gone meanwhile skipped).
local set = 0
for i, key in ipairs(KEYS) do
  local seconds, pending_most = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if redis.call('HEXISTS', key, 'pending') == 1 then
    local left = redis.call('TTL', key)
    if left < 0 or left > pending_most then
      redis.call('EXPIRE', key, pending_most)
    end
    set = set + 1
  elseif redis.call('EXISTS', key) == 1 then
    if seconds > 0 then
      redis.call('EXPIRE', key, seconds)
    else
      redis.call('PERSIST', key)
    end
    set = set + 1
  end
end
return set
