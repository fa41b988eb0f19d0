-- Reserve names for new clones of a pool, within the pool's deficit and the global task limit.
-- Counting and reserving in one script is what stops two passes at once from over-cloning.
-- ARGV: prefix, pool, size, task_limit, now, template, domain, candidate hostnames...
-- Returns the hostnames reserved (each now has a pending record and a place in the cloning set).
local prefix, pool, size, task_limit, now, template, domain =
  ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local pool_key = prefix .. 'pool:' .. pool .. ':'
-- VMs built for on-demand requests (their record names the request) are not the pool's: they
-- neither fill its deficit nor use the task limit, which has ondemand_clone_limit beside it.
local function own(hostnames)
  local count = 0
  for _, hostname in ipairs(hostnames) do
    if redis.call('HEXISTS', prefix .. 'vm:' .. hostname, 'request') == 0 then
      count = count + 1
    end
  end
  return count
end
local deficit = size - redis.call('ZCARD', pool_key .. 'ready') - own(redis.call('ZRANGE', pool_key .. 'pending', 0, -1))
local slots = task_limit - own(redis.call('ZRANGE', prefix .. 'cloning', 0, -1))
local wanted = math.min(deficit, slots)
local reserved = {}
for i = 8, #ARGV do
  if #reserved >= wanted then
    break
  end
  local hostname = ARGV[i]
  local vm_key = prefix .. 'vm:' .. hostname
  if redis.call('EXISTS', vm_key) == 0 then
    redis.call('HSET', vm_key, 'name', hostname, 'pool', pool, 'template', template,
      'domain', domain, 'state', 'pending', 'clone_start', now, 'pending_at', now)
    redis.call('ZADD', pool_key .. 'pending', now, hostname)
    redis.call('ZADD', prefix .. 'cloning', now, hostname)
    reserved[#reserved + 1] = hostname
  end
end
return reserved
