-- Shared helpers, prepended to every script by scripts.go. Every key a script
-- touches starts with the fleet's hash tag, so each script runs atomically on
-- the one node that owns the fleet's slot (single node, Sentinel or Cluster).
--
-- Some keys are named inside the scripts rather than passed in KEYS: the
-- keys of other instances (reaping), the epoch's synced set, the epoch
-- itself where leave and reap drop an instance's i:<id> and h:<id>, and the
-- rejection rings flushed by a heartbeat. Their names are only known while
-- the script runs; they are the prefix and a suffix store/keys.go names
-- (keys_test.go checks it). Redis, Sentinel and Redis Cluster accept this because
-- they share the fleet's hash tag, which the Cluster test checks; a proxy
-- that routes scripts by their declared KEYS alone is not supported.

-- now_ms is Redis' own clock: every lease and recovery wait is judged by it,
-- never by comparing the instances' clocks (PROTOCOL.md, "Leases and clocks").
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- run_id names the running Redis process: another one means Redis restarted
-- (from RDB/AOF, or a replica was promoted) and the data may be old.
-- check is '0' only for servers that cannot say (miniredis in tests).
-- RUN (declared before this file by scripts.go) is false, or the run_id of
-- the one process this copy of the script was loaded into: the same answer
-- without INFO, which costs more than the rest of the fence
-- (PROTOCOL.md, "The run id without INFO").
local function run_id(check)
  if check ~= '1' then return '' end
  return RUN or string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
end

-- replication reads the running process' INFO replication as field ->
-- value. Only heartbeats read it: the hot scripts never do.
local function replication()
  local f = {}
  for k, v in string.gmatch(redis.call('INFO', 'replication'), '([%w_]+):([^\r\n]*)') do f[k] = v end
  return f
end

-- promoted_from says whether the running process is a primary that was a
-- replica of the primary whose replication id was repl and received its
-- stream live before it became a primary: Redis keeps the old id as
-- master_replid2 when a replica is promoted, and its backlog then holds
-- bytes from before the switch (second_repl_offset). A primary restarted
-- from its RDB also keeps its old id as master_replid2, but its backlog
-- begins at the switch: not promoted (PROTOCOL.md, "Ending the wait early
-- after a failover").
local function promoted_from(repl)
  if not repl or repl == '' then return false end
  local f = replication()
  local second = tonumber(f['second_repl_offset'] or '-1') or -1
  local first = tonumber(f['repl_backlog_first_byte_offset'] or '-1') or -1
  return f['role'] == 'master' and f['master_replid2'] == repl and f['repl_backlog_active'] == '1'
    and second > 0 and first >= 0 and first < second
end

-- current_epoch says whether a call may act on this state: it returns nil
-- (the call is fenced) when the epoch is not the caller's (Redis lost its
-- data, or the caller missed a new epoch) or was created by another Redis
-- process. Otherwise it returns the end of the epoch's recovery wait by
-- Redis' clock and whether a tracker confirmed that wait on its own clock
-- (see sync.lua).
local function current_epoch(epoch_key, want, check)
  local e = redis.call('HMGET', epoch_key, 'id', 'run', 'until', 'confirmed')
  if e[1] ~= want or e[2] ~= run_id(check) then return nil end
  return tonumber(e[3]) or 0, e[4] == '1'
end

-- fence is the hot scripts' whole fence in one read (PROTOCOL.md, "One
-- read for the fence"): it returns nil when the epoch is not the caller's
-- or another Redis process made it (as current_epoch), otherwise whether
-- the epoch grants (`open`: sync.lua sets it once the recovery wait is
-- over and confirmed) and the seq of instance id's last heartbeat in this
-- epoch (field i:<id>, nil once the instance was reaped or left, or before
-- its first heartbeat in the epoch).
local function fence(epoch_key, want, check, id)
  local e = redis.call('HMGET', epoch_key, 'id', 'run', 'open', 'i:' .. id)
  if e[1] ~= want or e[2] ~= run_id(check) then return nil end
  return e[3] == '1', e[4] or false
end

-- Each pod's live count (all instances summed) is stored once: in avail
-- while the pod is placeable (ready, not draining), in load otherwise. Both
-- are sorted sets; admission picks from avail in O(log pods).
--
-- adjust moves a pod's live count by d, never below zero. No fleet total
-- follows it: the scaler's live count is the heartbeats' (summary.lua).
-- ZADD XX INCR touches avail only if the pod is there: one call where a
-- ZSCORE and a ZINCRBY would take two.
local function adjust(load, avail, pod, d)
  local key, after = avail, redis.call('ZADD', avail, 'XX', 'INCR', d, pod)
  if not after then key, after = load, redis.call('ZINCRBY', load, d, pod) end
  after = tonumber(after)
  if after < 0 or (after == 0 and key == load) then
    if key == load then redis.call('ZREM', load, pod) else redis.call('ZADD', avail, 0, pod) end
  end
end

-- give_back releases connections of instance id: for each (pod, n,
-- pending) triple of ARGV from index `from` to its end, up to n connections,
-- `pending` of which were never established (release.lua, and the releases
-- an admit call carries). Only what the instance holds is released, so a
-- duplicate release (or one after Redis lost its data) cannot push load
-- below the truth. seq is the instance's seq when the connections ended,
-- that of its last heartbeat before: a release queued before a heartbeat
-- is in that heartbeat's counts if the heartbeat ran first (Redis' seq is
-- then above it) and is ignored. Releases do not move seq: only
-- heartbeats do, so that a reaper watching it sees heartbeats. Returns how
-- many it released. last is the instance's seq in the epoch
-- (fence's second answer): false when it was reaped or left, and so holds
-- nothing here (remove_instance emptied inst:<id>, and only a heartbeat,
-- which sets i:<id> again, or a granted admission fills it).
local function give_back(load, avail, inst, pend, last, seq, from)
  if not last or tonumber(seq) < tonumber(last) then return 0 end
  local total = 0
  for i = from, #ARGV, 3 do
    local pod, n, pending = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    -- HINCRBY first: the common case (it held them) takes one call.
    local left, d = redis.call('HINCRBY', inst, pod, -n), n
    if left <= 0 then
      d = n + left -- what it held
      redis.call('HDEL', inst, pod)
    end
    if d > 0 then
      total = total + d
      pending = math.min(pending, d)
      if pending > 0 then
        local p = redis.call('HINCRBY', pend, pod, -pending)
        if p <= 0 then redis.call('HDEL', pend, pod) end
      end
      adjust(load, avail, pod, -d)
    end
  end
  return total
end

-- count is a pod's live connections, wherever its count is stored.
local function count(load, avail, pod)
  return tonumber(redis.call('ZSCORE', avail, pod) or redis.call('ZSCORE', load, pod) or '0')
end

-- A rejection ring is a hash of `slots` fixed-width time buckets: field c<i>
-- holds the count of bucket i (mod slots) and t<i> the bucket it belongs to,
-- so a stale slot is recognised and overwritten. Memory is bounded whatever
-- the rejection rate. Several rings can share one hash under field prefixes
-- (pfx). Returns true when this call opened a new bucket.
local function ring_add(key, pfx, bucket, slots, n)
  local slot = bucket % slots
  local tf = pfx .. 't' .. slot
  if redis.call('HGET', key, tf) == tostring(bucket) then
    redis.call('HINCRBY', key, pfx .. 'c' .. slot, n)
    return false
  end
  redis.call('HSET', key, tf, bucket, pfx .. 'c' .. slot, n)
  return true
end

-- ring_windows sums a ring over the last w1, w2, w3 buckets (current one
-- included) in one pass over at most 2*slots fields. A bucket one ahead of
-- `bucket` counts as current: instances' clocks differ a little.
local function ring_windows(key, pfx, bucket, w1, w2, w3)
  local f = redis.call('HGETALL', key)
  local t, c = {}, {}
  local n = #pfx
  for i = 1, #f, 2 do
    local name = f[i]
    if string.sub(name, 1, n) == pfx then
      local kind, slot = string.sub(name, n + 1, n + 1), string.sub(name, n + 2)
      if kind == 't' then t[slot] = tonumber(f[i + 1]) else c[slot] = tonumber(f[i + 1]) end
    end
  end
  local s1, s2, s3 = 0, 0, 0
  for slot, b in pairs(t) do
    local age = bucket - b
    local n = c[slot] or 0
    if age < -1 then n = 0 end
    if age < w3 then s3 = s3 + n end
    if age < w2 then s2 = s2 + n end
    if age < w1 then s1 = s1 + n end
  end
  return {s1, s2, s3}
end

-- remove_instance drops instance id from the fleet: its per-pod counts
-- leave load/avail, its keys go, and so does the total its heartbeats
-- published (h:<id>, summed by summary.lua). Its seq generation (gen)
-- stays, so that a later run of the same id still numbers above every
-- call of this one.
local function remove_instance(prefix, id)
  local ik = prefix .. 'inst:' .. id
  local f = redis.call('HGETALL', ik)
  for i = 1, #f, 2 do
    adjust(prefix .. 'load', prefix .. 'avail', f[i], -tonumber(f[i + 1]))
  end
  redis.call('DEL', ik, prefix .. 'pend:' .. id, prefix .. 'rejinst:' .. id)
  redis.call('ZREM', prefix .. 'instances', id)
  redis.call('HDEL', prefix .. 'seq', id)
  -- its admissions and releases are refused from now on (fence): 'lease';
  -- the scaler no longer counts its connections, nor the instance among
  -- the busy ones (sync.lua)
  local ek = prefix .. 'epoch'
  if (tonumber(redis.call('HGET', ek, 'h:' .. id) or '0') or 0) > 0 then redis.call('HINCRBY', ek, 'busy', -1) end
  redis.call('HDEL', ek, 'i:' .. id, 'h:' .. id)
end

-- reap_expired removes the instances named in ids (the caller watched each
-- one's seq stand still for a full lease of its own clock) whose lease has
-- also ended by Redis' clock. Both witnesses are needed, so that a clock
-- step on one host reaps nobody. Returns the reaped ids.
local function reap_expired(prefix, now, ids, self)
  local reaped = {}
  for _, id in ipairs(ids) do
    local lease = redis.call('ZSCORE', prefix .. 'instances', id)
    if id ~= self and lease and tonumber(lease) < now then
      remove_instance(prefix, id)
      reaped[#reaped + 1] = id
    end
  end
  return reaped
end
