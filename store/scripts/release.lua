-- release: instance <id> gives back connections, as many as it queued since
-- its previous release call (PROTOCOL.md, "Batches"): for each pod, up to n
-- connections, `pending` of which were never established (give_back in
-- lib.lua says how).
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 pend:<id>, 5 epoch
-- ARGV: 1 the caller's epoch id, 2 run id check, 3 instance id, 4 seq, then
--       per pod: pod, n, pending
-- The tracker sends only connections that ended since its last heartbeat:
-- one seq for the whole call. A late heartbeat after a release counts those
-- connections again: Redis then over-counts until the next heartbeat, which
-- is safe. No fleet total is written: the scaler's live count is what the
-- instances' heartbeats publish (PROTOCOL.md, "The fleet's live count").
-- Returns the number released, -1 when fenced.
local load_key, avail_key, inst_key = KEYS[1], KEYS[2], KEYS[3]
local pend_key, epoch_key = KEYS[4], KEYS[5]
local epoch, run_check, id, seq = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local RELEASES = 5 -- ARGV index of the first released (pod, n, pending)

-- The epoch's i:<id> is the instance's seq (fence): one read for the
-- whole fence; no recovery wait or lease is needed to give slots back.
local open, last = fence(epoch_key, epoch, run_check, id)
if open == nil then return -1 end
return give_back(load_key, avail_key, inst_key, pend_key, last, seq, RELEASES)
