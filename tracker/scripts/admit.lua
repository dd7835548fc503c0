-- admit: place one new connection of an instance on a pod under the cap, as
-- a slot entitled to that instance (inst:<id>; see PROTOCOL.md).
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 pend:<id>, 5 stats, 6 rej:capacity,
--       7 rej:no_pods, 8 rejinst:<id>, 9 epoch, 10 instances
-- ARGV: 1 cap, 2 policy (pack|spread), 3 bucket, 4 slots, 5 events channel,
--       6 the caller's epoch id, 7 run id check (1|0), 8 instance id
-- Returns {1, pod}, {0, reason}, or {-1, why[, ms]} when Redis must not
-- decide: 'epoch' (not the caller's epoch, or another Redis process),
-- 'recovering' (after data loss, ms until every instance has re-published:
-- at least 1 while no tracker has confirmed the wait on its own clock),
-- 'lease' (the caller's lease ended and it may have been reaped).
local now = now_ms()
local until_ms, confirmed = fenced(KEYS[9], ARGV[6], ARGV[7])
if not until_ms then return {-1, 'epoch'} end
if now < until_ms or not confirmed then return {-1, 'recovering', math.max(until_ms - now, 1)} end
local lease = redis.call('ZSCORE', KEYS[10], ARGV[8])
if not lease or tonumber(lease) < now then return {-1, 'lease'} end

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
