-- leave: an instance leaves the fleet on its own: its Envoy's last
-- connection ended (a graceful drain, or the fleet left its configuration),
-- or its Envoy is gone, so nothing it counted is carried any more. Unlike
-- reap, no lease needs to have ended: the instance itself says so.
-- KEYS: 1 instances (also named from the prefix below).
-- ARGV: 1 prefix, 2 instance id, 3 the call's sequence number: kept in seq
-- after the instance is gone, so that a heartbeat of it that runs late
-- (sent before, its reply timed out) is stale and cannot bring it back.
-- Returns 1 if the instance was there.
-- A leave that runs after a later call of the instance (its seq below the
-- instance's in Redis) does nothing: it was sent, its reply was lost, and
-- the instance went on (a removed fleet configured again); removing it
-- now would erase counts of connections it holds (PROTOCOL.md, "Leaving").
local prefix, id, seq = ARGV[1], ARGV[2], ARGV[3]

if tonumber(seq) < tonumber(redis.call('HGET', prefix .. 'seq', id) or '0') then return 0 end
local there = redis.call('ZSCORE', prefix .. 'instances', id)
remove_instance(prefix, id)
redis.call('HSET', prefix .. 'seq', id, seq)
if there then
  -- Counted, so that the scaler tells a departure from a loss.
  redis.call('HINCRBY', prefix .. 'stats', 'left', 1)
  return 1
end
return 0
