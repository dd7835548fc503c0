-- layout: record the layout (number of groups) a fleet with shards runs,
-- unless one is recorded, and return the recorded one (PROTOCOL.md,
-- "Shards"). One script, so that SET NX and GET see the same value.
-- KEYS: 1 layout (in group 0's hash tag)
-- ARGV: 1 n, the caller's shards
local layout_key = KEYS[1]
local n_arg = ARGV[1]
redis.call('SET', layout_key, n_arg, 'NX')
return tonumber(redis.call('GET', layout_key))
