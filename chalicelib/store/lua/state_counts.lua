-- How many VMs each state set holds: the feeds' counts of every pool in a few script calls
-- instead of one ZCARD command per pool and state (5,000 at 1,000 pools, about 60 ms of a
-- worker's CPU to send and parse; here about 8).
-- KEYS: state sorted sets. Answers their sizes, in order.
local answer = {}
for index, key in ipairs(KEYS) do
  answer[index] = redis.call('ZCARD', key)
end
return answer
