-- decision_record: the scaler replaces one trigger's decision hash, gives it
-- the decision TTL, indexes it, and drops from the index the triggers not
-- evaluated within the TTL (their hashes have expired). It also deletes the
-- legacy whole-fleet hash, which nothing refreshes any more. Only commands
-- of the documented ACL (README.md) are used.
local decision_key, index_key, legacy_key = KEYS[1], KEYS[2], KEYS[3]
local trigger, now_arg, ttl_s, cutoff = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local FIELDS = 5 -- ARGV index of the first (field, value) of the hash
redis.call('DEL', decision_key, legacy_key)
redis.call('HSET', decision_key, unpack(ARGV, FIELDS))
redis.call('EXPIRE', decision_key, ttl_s)
redis.call('ZADD', index_key, now_arg, trigger)
local stale = redis.call('ZRANGEBYSCORE', index_key, '-inf', '(' .. cutoff)
if #stale > 0 then redis.call('ZREM', index_key, unpack(stale)) end
redis.call('EXPIRE', index_key, ttl_s)
return 1
