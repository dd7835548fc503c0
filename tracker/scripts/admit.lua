-- admit: place one new connection of an instance on a pod under the cap.
-- The instance's lease is not renewed here: a tracker admits through Redis
-- only after a heartbeat succeeded (which renewed it) and until one fails.
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 pend:<id>, 5 stats, 6 rej:capacity,
--       7 rej:no_pods, 8 rejinst:<id>
-- ARGV: 1 cap, 2 policy (pack|spread), 3 bucket, 4 slots, 5 events channel
-- Returns {1, pod} or {0, reason}.
local cap = tonumber(ARGV[1])
local pod
if ARGV[2] == 'pack' then
  -- fullest pod still under the cap: empty pods stay empty and can go.
  pod = redis.call('ZREVRANGEBYSCORE', KEYS[2], '(' .. cap, '-inf', 'LIMIT', 0, 1)[1]
else
  local r = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if r[1] and tonumber(r[2]) < cap then pod = r[1] end
end
if pod then
  redis.call('ZINCRBY', KEYS[2], 1, pod) -- picked from avail: its count is there
  redis.call('HINCRBY', KEYS[3], pod, 1)
  redis.call('HINCRBY', KEYS[4], pod, 1) -- not established yet
  if redis.call('HINCRBY', KEYS[5], 'live', 1) == 1 then
    redis.call('PUBLISH', ARGV[5], 'active')
  end
  return {1, pod}
end
local reason, ring = 'capacity', KEYS[6]
if redis.call('ZCARD', KEYS[2]) == 0 then reason, ring = 'no_pods', KEYS[7] end
local bucket, slots = tonumber(ARGV[3]), tonumber(ARGV[4])
ring_add(KEYS[8], reason .. ':', bucket, slots, 1)
-- Publishing once per bucket is enough to wake a scaler waiting for the
-- first rejection, and keeps a rejection storm off the pub/sub bus.
if ring_add(ring, '', bucket, slots, 1) then
  redis.call('PUBLISH', ARGV[5], reason)
end
return {0, reason}
