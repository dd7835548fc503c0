-- sync: the heartbeat. Instance ARGV[1] replaces its per-pod counts with its
-- local truth, load/avail are corrected by the difference, its lease is
-- renewed (Redis' clock), it joins the epoch's synced set, buffered
-- rejections are flushed and the expired instances it names are reaped.
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 pend:<id>, 5 instances, 6 stats,
--       7 epoch, 8 seq
-- pend:<id> holds only the connections not yet established at the instance's
-- last heartbeat (admit.lua leaves it alone, releases lower it): they are few
-- and short-lived, so established = live - pending costs almost no memory.
-- ARGV: 1 id, 2 lease (ms), 3 random part of a new epoch's id (Redis' clock
--       goes before it), 4 prefix, 5 bucket slots,
--       6 events channel, 7 run id check (1|0), 8 the call's sequence number,
--       9 recovery wait (ms), 10 the epoch id whose wait the caller confirms
--       ('' for none: see below),
--       11 npods, then npods x (pod, live, established),
--       then nrej, then nrej x (reason, bucket, count),
--       then nreap, then nreap x id
-- Returns {epoch id, created (0|1), ms until the recovery wait ends (at
--          least 1 while unconfirmed),
--          instances (id, lease ms, seq, ...), avail (pod, count, ...),
--          reaped ids, stale (1: a later heartbeat or release already ran;
--          nothing done), the instance's last seq}.
local id, prefix = ARGV[1], ARGV[4]
local slots = tonumber(ARGV[5])
local now = now_ms()

-- A new epoch when Redis has none (it lost its data) or when the one it has
-- was created by another Redis process (restarted from disk, or a promoted
-- replica): such data may be older than what the instances did since, so
-- nothing is granted until every instance has had a lease to re-publish.
local created = 0
if redis.call('TYPE', KEYS[7]).ok == 'string' then
  redis.call('DEL', KEYS[7]) -- a version before epochs were fenced: start anew
end
local e = redis.call('HMGET', KEYS[7], 'id', 'run', 'until', 'confirmed', 'created')
local run = run_id(ARGV[7])
local epoch, until_ms, confirmed = e[1], tonumber(e[3]) or 0, e[4] == '1'
if not epoch or e[2] ~= run then
  epoch, until_ms, confirmed = now .. '-' .. ARGV[3], now + tonumber(ARGV[9]), false
  redis.call('DEL', KEYS[7])
  redis.call('HSET', KEYS[7], 'id', epoch, 'run', run, 'until', until_ms, 'created', now)
  created = 1
elseif not confirmed and tonumber(e[5] or '0') + tonumber(ARGV[9]) > until_ms then
  -- An instance with a longer TTL than the epoch's creator: the wait is the
  -- longest TTL of those seen (they should all be the same).
  until_ms = tonumber(e[5]) + tonumber(ARGV[9])
  redis.call('HSET', KEYS[7], 'until', until_ms)
end
-- Redis' clock may step forward and end the wait early: the wait also needs
-- a tracker to confirm it, one that watched a full instance TTL of its own
-- monotonic clock pass since it first saw this epoch (after its creation).
if not confirmed and ARGV[10] == epoch then
  redis.call('HSET', KEYS[7], 'confirmed', '1')
  confirmed = true
end
local left = math.max(0, until_ms - now)
if not confirmed then left = math.max(left, 1) end

local seq = tonumber(ARGV[8])
local last = tonumber(redis.call('HGET', KEYS[8], id) or '0')
if seq < last then
  return {epoch, created, left, {}, {}, {}, 1, tostring(last)}
end
redis.call('HSET', KEYS[8], id, seq)

local old = {}
local f = redis.call('HGETALL', KEYS[3])
for i = 1, #f, 2 do old[f[i]] = tonumber(f[i + 1]) end

local i = 12
local npods = tonumber(ARGV[11])
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
    redis.call('PUBLISH', ARGV[6], 'active')
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
local nreap = tonumber(ARGV[i])
local cands = {}
for k = 1, nreap do cands[k] = ARGV[i + k] end

redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), id)
local synced = prefix .. 'synced:' .. epoch
redis.call('SADD', synced, id)
redis.call('EXPIRE', synced, 86400)

local reaped = reap_expired(prefix, now, cands, id)
local inst = {}
local ids = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
for k = 1, #ids, 2 do
  inst[#inst + 1] = ids[k]
  inst[#inst + 1] = ids[k + 1]
  inst[#inst + 1] = redis.call('HGET', KEYS[8], ids[k]) or '0'
end
return {epoch, created, left, inst, redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), reaped, 0, tostring(seq)}
