-- sync: the heartbeat. Instance `id` replaces its per-pod counts with its
-- local truth, load/avail are corrected by the difference, its lease is
-- renewed (Redis' clock), it joins the epoch's synced set, buffered
-- rejections are flushed and the expired instances it names are reaped.
-- It also publishes the instance's total of live connections (h:<id> in
-- the epoch, beside i:<id>): the scaler's live count is their sum over the
-- members of instances (summary.lua; PROTOCOL.md, "The fleet's live count").
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 pend:<id>, 5 instances, 6 epoch,
--       7 seq
-- pend:<id> holds only the connections not yet established at the instance's
-- last heartbeat (admit.lua leaves it alone, releases lower it): they are few
-- and short-lived, so established = live - pending costs almost no memory.
-- ARGV: 1 id, 2 lease (ms), 3 random part of a new epoch's id (Redis' clock
--       goes before it), 4 prefix, 5 bucket slots,
--       6 events channel, 7 run id check (1|0), 8 the call's sequence number,
--       9 recovery wait (ms), 10 the epoch id whose wait the caller confirms
--       ('' for none: see below), 11 the replicas each of the instance's
--       admissions waits for (0: none; see "the early end" below),
--       12 kind: 'full' (the pods sent are all the instance holds) or
--       'delta' (only the pods whose counts moved since the base: see
--       "A delta" below), 13 the base's seq and 14 its epoch id ('' for
--       a full one), 15 the instance's live connections, all its pods (a
--       delta's too, not only the pods it sends), 16 npods, then npods x
--       (pod, live, established),
--       then nrej, then nrej x (reason, bucket, count),
--       then nreap, then nreap x id
-- Returns {epoch id, created (0|1), ms until the recovery wait ends (at
--          least 1 while unconfirmed),
--          reaped ids, stale (1: a later heartbeat or release already
--          ran; nothing done; 2: a delta whose base Redis no longer holds,
--          no count, seq, lease or rejection touched, only the epoch's
--          own fields as any heartbeat's: send a full one), the instance's
--          last seq}.
-- What the caller reads of the fleet is not in it: the placeable pods'
-- counts (avail) come from a plain ZRANGE pipelined after this script,
-- which costs Redis about half of returning them from Lua (every reply of
-- redis.call becomes a Lua table, then a reply again), and the instances'
-- seqs, now and then, from instances.lua (store/sync.go).
local load_key, avail_key, inst_key, pend_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local instances_key, epoch_key, seq_key = KEYS[5], KEYS[6], KEYS[7]
local id, lease_ms, new_epoch, prefix, slots_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local channel, run_check, seq_arg, recovery_ms, confirm = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local wait_replicas = ARGV[11]
local delta, base_seq, base_epoch = ARGV[12] == 'delta', ARGV[13], ARGV[14]
local total = tonumber(ARGV[15])
local COUNTED = 16 -- ARGV index of npods; the lists follow it

local slots = tonumber(slots_arg)
local now = now_ms()

-- A new epoch when Redis has none (it lost its data) or when the one it has
-- was created by another Redis process (restarted from disk, or a promoted
-- replica): such data may be older than what the instances did since, so
-- nothing is granted until every instance has had a lease to re-publish.
local created = 0
if redis.call('TYPE', epoch_key).ok == 'string' then
  redis.call('DEL', epoch_key) -- a version before epochs were fenced: start anew
end
local e = redis.call('HMGET', epoch_key, 'id', 'run', 'until', 'confirmed', 'created', 'repl', 'waited', 'early', 'open', 'h:' .. id, 'i:' .. id)
local run = run_id(run_check)
local epoch, until_ms, confirmed = e[1], tonumber(e[3]) or 0, e[4] == '1'
-- opened: the epoch's `open` is set (below, open_if_over)
local opened = e[9] == '1'
-- early: how many instances the early end still waits for (below); a
-- count in the epoch hash, which has no TTL, so that losing the set itself
-- (evicted, expired, deleted) leaves the full wait, never ends it.
local early = (tonumber(e[8] or '0') or 0) > 0
-- was: the total this instance's last heartbeat in the epoch published
-- (0 when none, or a new epoch below: it starts empty)
local was = tonumber(e[10] or '0') or 0
-- The early end (PROTOCOL.md, "Ending the wait early after a failover"):
-- waits says that this instance's admissions count only once every replica
-- this Redis has acknowledged them: WAIT below the number of replicas lets
-- one that lacks a grant be promoted, even without a partition. An epoch's
-- `waited` stays 1 while every heartbeat in it said so, and `repl` is the
-- replication id of the process that made it (kept current: a primary
-- without replicas for a while takes a new one).
local wait_n = tonumber(wait_replicas) or 0
local info = nil
if run_check == '1' and (wait_n > 0 or not epoch or e[2] ~= run) then info = replication() end
local repl = nil
if info then repl = info['master_replid'] or '' end
local waits = wait_n > 0 and (not info or wait_n >= (tonumber(info['connected_slaves'] or '0') or 0))
if not epoch or e[2] ~= run then
  -- A new epoch over one another process made ends its wait early if that
  -- process is the primary this one was a replica of until its promotion,
  -- every heartbeat in its epoch waited for the replicas (this one too),
  -- and its own wait was over: then this data holds every instance that
  -- may hold connections, in `instances`; the wait ends once each of them
  -- has re-published here.
  local members = nil
  if epoch and waits and e[7] == '1' and e[4] == '1' and run_check == '1' and promoted_from(e[6]) then
    members = redis.call('ZRANGE', instances_key, 0, -1)
    -- no instance at all: nothing to wait for but nothing to gain either;
    -- the full wait, as the count below could never reach 0
    if #members == 0 then members = nil end
  end
  epoch, until_ms, confirmed, early, opened = now .. '-' .. new_epoch, now + tonumber(recovery_ms), false, false, false
  redis.call('DEL', epoch_key)
  redis.call('HSET', epoch_key, 'id', epoch, 'run', run, 'until', until_ms, 'created', now, 'repl', repl or '')
  if waits then redis.call('HSET', epoch_key, 'waited', '1') end
  if members then
    -- a hash (id -> 1), emptied with HDEL: the commands a tracker's ACL
    -- already allows (README, "Operations")
    local republish = prefix .. 'republish:' .. epoch
    -- (this instance too: it leaves the set below, unless this call is
    -- stale and publishes nothing)
    for _, m in ipairs(members) do redis.call('HSET', republish, m, '1') end
    redis.call('EXPIRE', republish, 86400)
    redis.call('HSET', epoch_key, 'early', #members)
    early = true
  end
  created = 1
  was = 0
else
  if not waits and (e[7] == '1' or early) then
    -- a heartbeat that does not wait for the replicas: this epoch's
    -- instances set may miss what it admitted, and its wait is the full one
    redis.call('HDEL', epoch_key, 'waited', 'early')
    early = false
  end
  if repl and repl ~= e[6] then redis.call('HSET', epoch_key, 'repl', repl) end
end
if created == 0 and not confirmed and tonumber(e[5] or '0') + tonumber(recovery_ms) > until_ms then
  -- An instance with a longer TTL than the epoch's creator: the wait is the
  -- longest TTL of those seen (they should all be the same).
  until_ms = tonumber(e[5]) + tonumber(recovery_ms)
  redis.call('HSET', epoch_key, 'until', until_ms)
end
-- Redis' clock may step forward and end the wait early: the wait also needs
-- a tracker to confirm it, one that watched a full instance TTL of its own
-- monotonic clock pass since it first saw this epoch (after its creation).
if not confirmed and confirm == epoch then
  redis.call('HSET', epoch_key, 'confirmed', '1')
  confirmed = true
end
local function left()
  if confirmed then return math.max(0, until_ms - now) end
  return math.max(until_ms - now, 1)
end
-- open_if_over opens the epoch (`open` = 1) once its wait is over by
-- Redis' clock and confirmed, or ended early: the admit script then
-- grants without reading the clock (PROTOCOL.md, "One read for the
-- fence"). The admit script opens it too, at the first admission after
-- the wait; nothing closes it but a new epoch (DEL).
local function open_if_over()
  if not opened and left() == 0 then
    redis.call('HSET', epoch_key, 'open', '1')
    opened = true
  end
end
open_if_over()

local seq = tonumber(seq_arg)
local last = tonumber(redis.call('HGET', seq_key, id) or '0')
if seq < last then
  return {epoch, created, left(), {}, 1, tostring(last)}
end
-- A delta (PROTOCOL.md, "Delta heartbeats") sends only the pods whose
-- counts moved since its base, the instance's last acknowledged heartbeat;
-- for the others it takes inst:<id> and pend:<id> as they are. That holds
-- only while nothing but the instance's own acknowledged calls changed
-- them since: i:<id> is still the base's seq in the base's epoch. A reap,
-- a leave, --forget-instance and a new epoch remove i:<id>; a heartbeat
-- whose reply the tracker did not read sets another seq. Otherwise this
-- call does nothing more (no seq, i:<id>, lease, counts or rejections:
-- while i:<id> is missing its admissions are refused 'lease') and the
-- tracker sends a full heartbeat at once.
-- (Compared as numbers: Lua writes seq as a number, exact below 2^53.)
-- i:<id> is the one the HMGET above read: nothing in this call wrote it
-- since, and when this call made a new epoch, the epoch ids differ.
if delta then
  local beat = tonumber(e[11] or '')
  if epoch ~= base_epoch or not beat or beat ~= tonumber(base_seq) then
    return {epoch, created, left(), {}, 2, tostring(last)}
  end
end
redis.call('HSET', seq_key, id, seq)
-- The same seq in the epoch: the admit and release scripts read it with
-- the epoch (lib.lua fence), and its absence is the 'lease' refusal. A
-- new epoch (DEL) drops every instance's; remove_instance drops one.
-- Beside it, in the same call, the instance's total (h:<id>): what the
-- counts below leave in inst:<id>, summed by summary.lua while the
-- instance's lease runs. The same DEL and HDEL drop it.
redis.call('HSET', epoch_key, 'i:' .. id, seq, 'h:' .. id, total)
-- The scaler's wake-up from zero (`active`): the epoch's `busy` counts
-- the instances whose total is not 0, and the fleet turned active when it
-- rises from 0: at most a heartbeat after the admission that made it, and
-- once per such rise of the whole fleet, not per instance (PROTOCOL.md,
-- "The fleet's live count"). remove_instance lowers it with the total it
-- drops; a new epoch (DEL) starts it anew, as every total.
if was <= 0 and total > 0 then
  if redis.call('HINCRBY', epoch_key, 'busy', 1) == 1 then redis.call('PUBLISH', channel, 'active') end
elseif was > 0 and total <= 0 then
  redis.call('HINCRBY', epoch_key, 'busy', -1)
end

-- This heartbeat re-publishes the instance: once every instance the early
-- end waits for has, the wait is over. No clock decides it, so no tracker
-- needs to confirm it (the old epoch's wait was confirmed).
if early and not confirmed then
  -- Only an instance that was in the set lowers the count: a lost set
  -- lowers nothing, and the wait goes on to its full length.
  if redis.call('HDEL', prefix .. 'republish:' .. epoch, id) == 1
    and redis.call('HINCRBY', epoch_key, 'early', -1) <= 0 then
    until_ms, confirmed = math.min(until_ms, now), true
    redis.call('HSET', epoch_key, 'until', until_ms, 'confirmed', '1')
    redis.call('HDEL', epoch_key, 'early')
    open_if_over()
  end
end

local npods = tonumber(ARGV[COUNTED])
local i = COUNTED + 1
if delta then
  -- Only the pods sent, each to the counts sent (0 and 0: it holds none
  -- there any more); the rest of inst:<id> and pend:<id> stays.
  for _ = 1, npods do
    local pod, live, est = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    i = i + 3
    local d = live - tonumber(redis.call('HGET', inst_key, pod) or '0')
    if d ~= 0 then
      adjust(load_key, avail_key, pod, d)
      if live > 0 then redis.call('HSET', inst_key, pod, live) else redis.call('HDEL', inst_key, pod) end
    end
    if live > est then redis.call('HSET', pend_key, pod, live - est) else redis.call('HDEL', pend_key, pod) end
  end
else
  -- The whole of inst:<id> and pend:<id> anew; the pods not sent leave.
  local old = {}
  local f = redis.call('HGETALL', inst_key)
  for k = 1, #f, 2 do old[f[k]] = tonumber(f[k + 1]) end
  redis.call('DEL', inst_key, pend_key)
  for _ = 1, npods do
    local pod, live, est = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    i = i + 3
    local d = live - (old[pod] or 0)
    old[pod] = nil
    if d ~= 0 then adjust(load_key, avail_key, pod, d) end
    if live > 0 then redis.call('HSET', inst_key, pod, live) end
    if live > est then redis.call('HSET', pend_key, pod, live - est) end
  end
  for pod, n in pairs(old) do
    adjust(load_key, avail_key, pod, -n)
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

redis.call('ZADD', instances_key, now + tonumber(lease_ms), id)
local synced = prefix .. 'synced:' .. epoch
redis.call('SADD', synced, id)
redis.call('EXPIRE', synced, 86400)

local reaped = reap_expired(prefix, now, cands, id)
return {epoch, created, left(), reaped, 0, tostring(seq)}
