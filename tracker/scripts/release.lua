-- release: instance <id> gives back up to ARGV[2] connections on pod ARGV[1],
-- ARGV[3] of which were never established.
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 stats, 5 pend:<id>, 6 epoch, 7 seq
-- ARGV: 1 pod, 2 n, 3 pending, 4 the caller's epoch id, 5 run id check,
--       6 instance id, 7 the call's sequence number
-- Only what the instance holds is released, so a duplicate release (or one
-- after Redis lost its data) cannot push load below the truth. A release
-- that arrives after a later heartbeat of its instance (a reply that timed
-- out, then ran) is already in that heartbeat's counts: its sequence number
-- is below the heartbeat's, and it is ignored. Releases do not move seq:
-- only heartbeats do, so that a reaper watching it sees heartbeats. A late
-- heartbeat after a release counts that connection again: Redis then
-- over-counts until the next heartbeat, which is safe. Returns the number
-- released, -1 when fenced.
if not fenced(KEYS[6], ARGV[4], ARGV[5]) then return -1 end
if tonumber(ARGV[7]) < tonumber(redis.call('HGET', KEYS[7], ARGV[6]) or '0') then return 0 end
local pod, n = ARGV[1], tonumber(ARGV[2])
local have = tonumber(redis.call('HGET', KEYS[3], pod) or '0')
local d = math.min(have, n)
if d <= 0 then return 0 end
if have == d then
  redis.call('HDEL', KEYS[3], pod)
else
  redis.call('HINCRBY', KEYS[3], pod, -d)
end
local pending = math.min(tonumber(ARGV[3]), tonumber(redis.call('HGET', KEYS[5], pod) or '0'))
if pending > 0 then
  if redis.call('HINCRBY', KEYS[5], pod, -pending) <= 0 then redis.call('HDEL', KEYS[5], pod) end
end
local moved = adjust(KEYS[1], KEYS[2], pod, -d)
if moved ~= 0 then redis.call('HINCRBY', KEYS[4], 'live', moved) end
return d
