-- leave: an instance leaves the fleet on its own: its Envoy's last
-- connection ended (a graceful drain, or the fleet left its configuration),
-- or its Envoy is gone, so nothing it counted is carried any more. Unlike
-- reap, no lease needs to have ended: the instance itself says so.
-- ARGV: 1 prefix, 2 instance id, 3 the call's sequence number: kept in seq
-- after the instance is gone, so that a heartbeat of it that runs late
-- (sent before, its reply timed out) is stale and cannot bring it back.
-- Returns 1 if the instance was there.
local there = redis.call('ZSCORE', ARGV[1] .. 'instances', ARGV[2])
remove_instance(ARGV[1], ARGV[2])
redis.call('HSET', ARGV[1] .. 'seq', ARGV[2], ARGV[3])
if there then
  -- Counted, so that the scaler tells a departure from a loss.
  redis.call('HINCRBY', ARGV[1] .. 'stats', 'left', 1)
  return 1
end
return 0
