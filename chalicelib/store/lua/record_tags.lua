-- Count tags set on VMs in a day's tag statistics (lua/tag_stats.lua: bounded, a previous
-- release's fields moved over first).
-- KEYS[1] the day's tag hash, KEYS[2] the day's durations hash; ARGV[1] ttl seconds, ARGV[2] max
-- names, ARGV[3] max values per name, ARGV[4..] name, value, ...
local tags = {}
for i = 4, #ARGV do
  tags[#tags + 1] = ARGV[i]
end
count_tags({key = 1, durations = 2, ttl = ARGV[1], max_names = ARGV[2], max_values = ARGV[3]}, tags)
return 1
