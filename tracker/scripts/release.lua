-- release: instance <id> gives back connections, as many as it queued since
-- its previous release call (PROTOCOL.md, "Batches"): for each pod, up to n
-- connections, `pending` of which were never established.
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 stats, 5 pend:<id>, 6 epoch, 7 seq
-- ARGV: 1 the caller's epoch id, 2 run id check, 3 instance id, 4 seq, then
--       per pod: pod, n, pending
-- Only what the instance holds is released, so a duplicate release (or one
-- after Redis lost its data) cannot push load below the truth. seq is the
-- instance's seq when the connections ended, that of its last heartbeat
-- before: a release queued before a heartbeat is in that heartbeat's counts
-- if the heartbeat ran first (Redis' seq is then above it) and is ignored.
-- The tracker sends only connections that ended since its last heartbeat:
-- one seq for the whole call.
-- Releases do not move seq: only heartbeats do, so that a reaper watching it
-- sees heartbeats. A late heartbeat after a release counts those
-- connections again: Redis then over-counts until the next heartbeat, which
-- is safe. Returns the number released, -1 when fenced.
if not fenced(KEYS[6], ARGV[1], ARGV[2]) then return -1 end
if tonumber(ARGV[4]) < tonumber(redis.call('HGET', KEYS[7], ARGV[3]) or '0') then return 0 end
local total, moved = 0, 0
for i = 5, #ARGV, 3 do
  local pod, n, pending = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  -- HINCRBY first: the common case (it held them) takes one call.
  local left, d = redis.call('HINCRBY', KEYS[3], pod, -n), n
  if left <= 0 then
    d = n + left -- what it held
    redis.call('HDEL', KEYS[3], pod)
  end
  if d > 0 then
    total = total + d
    pending = math.min(pending, d)
    if pending > 0 then
      local p = redis.call('HINCRBY', KEYS[5], pod, -pending)
      if p <= 0 then redis.call('HDEL', KEYS[5], pod) end
    end
    moved = moved + adjust(KEYS[1], KEYS[2], pod, -d)
  end
end
if moved ~= 0 then redis.call('HINCRBY', KEYS[4], 'live', moved) end
return total
