-- release: instance <id> gives back up to ARGV[2] connections on pod ARGV[1],
-- ARGV[3] of which were never established.
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 stats, 5 pend:<id>
-- Only what the instance holds is released, so a duplicate release (or one
-- after Redis lost its data) cannot push load below the truth.
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
