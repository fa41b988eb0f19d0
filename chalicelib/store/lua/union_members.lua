-- The members of several sorted sets, each once, in the order first met: /status's open
-- on-demand requests of every pool in a few script calls instead of one ZRANGE per pool.
-- KEYS: sorted sets. Answers their members.
local seen, answer = {}, {}
for _, key in ipairs(KEYS) do
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if not seen[member] then
      seen[member] = true
      answer[#answer + 1] = member
    end
  end
end
return answer
