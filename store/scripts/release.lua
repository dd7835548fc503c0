-- release: instance <id> gives back connections, as many as it queued since
-- its previous release call (PROTOCOL.md, "Batches"): for each pod, up to n
-- connections, `pending` of which were never established (give_back in
-- lib.lua says how).
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 stats, 5 pend:<id>, 6 epoch, 7 seq
-- ARGV: 1 the caller's epoch id, 2 run id check, 3 instance id, 4 seq, then
--       per pod: pod, n, pending
-- The tracker sends only connections that ended since its last heartbeat:
-- one seq for the whole call. A late heartbeat after a release counts those
-- connections again: Redis then over-counts until the next heartbeat, which
-- is safe. Returns the number released, -1 when fenced.
if not fenced(KEYS[6], ARGV[1], ARGV[2]) then return -1 end
local total, moved = give_back(KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[7], ARGV[3], ARGV[4], 5)
if moved ~= 0 then redis.call('HINCRBY', KEYS[4], 'live', moved) end
return total
