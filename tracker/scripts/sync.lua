-- sync: the heartbeat. Instance ARGV[1] replaces its per-pod counts with its
-- local truth, load/avail are corrected by the difference, its lease is
-- renewed, it joins the epoch's synced set, buffered rejections are flushed
-- and expired instances are reaped.
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 pend:<id>, 5 instances, 6 stats, 7 epoch
-- pend:<id> holds only the connections not yet established: they are few and
-- short-lived, so established = live - pending costs almost no memory.
-- ARGV: 1 id, 2 now (ms), 3 lease expiry (ms), 4 candidate epoch, 5 prefix,
--       6 bucket slots, 7 reap limit, 8 events channel,
--       9 npods, then npods x (pod, live, established),
--       then nrej, then nrej x (reason, bucket, count)
-- Returns {epoch, created, live instances (id, lease, ...), avail (pod, count, ...), reaped ids}.
local id, now, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[5]
local slots = tonumber(ARGV[6])

local created = 0
local epoch = redis.call('GET', KEYS[7])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[7], epoch)
  created = 1
end

local old = {}
local f = redis.call('HGETALL', KEYS[3])
for i = 1, #f, 2 do old[f[i]] = tonumber(f[i + 1]) end

local i = 10
local npods = tonumber(ARGV[9])
local moved = 0
redis.call('DEL', KEYS[3], KEYS[4])
for _ = 1, npods do
  local pod, live, est = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local d = live - (old[pod] or 0)
  old[pod] = nil
  if d ~= 0 then moved = moved + adjust(KEYS[1], KEYS[2], pod, d) end
  if live > 0 then redis.call('HSET', KEYS[3], pod, live) end
  if live > est then redis.call('HSET', KEYS[4], pod, live - est) end
end
for pod, n in pairs(old) do
  moved = moved + adjust(KEYS[1], KEYS[2], pod, -n)
end
if moved ~= 0 then
  if redis.call('HINCRBY', KEYS[6], 'live', moved) > 0 and moved > 0 then
    redis.call('PUBLISH', ARGV[8], 'active')
  end
end

local nrej = tonumber(ARGV[i])
i = i + 1
for _ = 1, nrej do
  local reason, bucket, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  ring_add(prefix .. 'rej:' .. reason, '', bucket, slots, n)
  ring_add(prefix .. 'rejinst:' .. id, reason .. ':', bucket, slots, n)
end

redis.call('ZADD', KEYS[5], ARGV[3], id)
local synced = prefix .. 'synced:' .. epoch
redis.call('SADD', synced, id)
redis.call('EXPIRE', synced, 86400)

local reaped = reap_expired(prefix, now, tonumber(ARGV[7]), id)
local ids = redis.call('ZRANGEBYSCORE', KEYS[5], now, '+inf', 'WITHSCORES')
return {epoch, created, ids, redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), reaped}
