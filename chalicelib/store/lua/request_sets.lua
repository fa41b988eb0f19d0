-- The sets counting an on-demand request toward the bounds on how many requests Redis keeps
-- (lua/ondemand_create.lua) live at least 'seconds' more, as the request now does: the service's
-- kept set KEYS[kept_index], and the owner's requests set of the owner whose holdings set the
-- request's 'holdings' field names ('holdings': keys.holdings and keys.owner_requests share the
-- owner hash; a request made without an owner has neither). Never brought in (EXPIRE GT: a set
-- counts other requests too, some kept longer); a set gone stays gone.
local function keep_counting(holdings, seconds, kept_index, holdings_template, owned_template)
  redis.call('EXPIRE', KEYS[kept_index], seconds, 'GT')
  local at = string.find(holdings_template, '\0', 1, true)
  local before, after = string.sub(holdings_template, 1, at - 1), string.sub(holdings_template, at + 1)
  if holdings and #holdings > #before + #after and string.sub(holdings, 1, #before) == before
      and string.sub(holdings, #holdings - #after + 1) == after then
    local owned_key = key_of(owned_template, string.sub(holdings, #before + 1, #holdings - #after))
    redis.call('EXPIRE', owned_key, seconds, 'GT')
  end
end
