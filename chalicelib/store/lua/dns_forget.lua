-- Forget a VM's DNS record once the pass deleted it (manager/context.py withdraw_dns): its notes
-- (dns_name, dns_plugin, dns_published, dns_error) go only if they still name the record deleted
-- (that name, by that entry). A record published again under that name by another entry meanwhile
-- (a pass with a newer view of the pool's dns_plugin) may be the one the delete removed: what DNS
-- holds there is unknown ('?'), and the version moves on, so the next pass publishes it again.
-- Notes of another name are a newer publication: left as they are.
-- KEYS[1] the record. ARGV[1] the name deleted, ARGV[2] the entry it was noted with ('' for none).
-- Returns 1 when forgotten, 0 when not.
local name, plugin = unpack(redis.call('HMGET', KEYS[1], 'dns_name', 'dns_plugin'))
if name ~= ARGV[1] then
  return 0
end
if (plugin or '') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'dns_name', 'dns_plugin', 'dns_published', 'dns_error')
  return 1
end
redis.call('HINCRBY', KEYS[1], 'dns_version', 1)
redis.call('HSET', KEYS[1], 'dns_published', '?')
return 0
