-- admit: place `want` new connections of instance `id`, each on a pod under
-- the cap, as a slot entitled to that instance (inst:<id>; see PROTOCOL.md).
-- The state afterwards is what `want` admissions one after the other would
-- leave: the tracker sends the admissions that arrived while its previous
-- call was in flight as one call (PROTOCOL.md, "Batches"). Before them, it
-- applies the releases the call carries, as release.lua would
-- (`release_seq` is their seq, '' when none): one call where two would run
-- back to back.
-- KEYS: 1 load, 2 avail, 3 inst:<id>, 4 rej:capacity, 5 rej:no_pods,
--       6 rejinst:<id>, 7 epoch, 8 pend:<id>
-- pend:<id> is not touched by the admissions: a new connection counts as
-- established until the instance's next heartbeat says otherwise (sync.lua).
-- ARGV: 1 cap, 2 policy (pack|spread), 3 bucket, 4 slots, 5 events channel,
--       6 the caller's epoch id, 7 run id check (1|0), 8 instance id,
--       9 how many connections, 10 the releases' seq or '', 11 a hinted
--       pod or '' (below), 12 and 13 the lowest and highest count the
--       hinted pod may have before the admission, then per pod released:
--       pod, n, pending
-- Returns {granted, reason, released, hinted, pod, n, pod, n, ...}: the
-- pods granted with how many each, why the others were refused ('' when
-- none was), how many connections it released and whether the hint was
-- taken (1|0); or {-1, why, ms, released}
-- when Redis must not decide: 'epoch' (not the caller's epoch, or another
-- Redis process: nothing released, -1), 'recovering' (after data loss, ms
-- until every instance has re-published: at least 1 while no tracker has
-- confirmed the wait on its own clock), 'lease' (the caller was reaped or left, or has not
-- heartbeated in this epoch: PROTOCOL.md, "One read for the fence").
-- A granted admission of one connection on the caller's hint runs the
-- fence (HMGET epoch), the ZADD XX INCR of the hinted pod and the HINCRBY
-- of inst:<id>: three calls. Without a hint it runs the fence, the pick
-- (ZREVRANGEBYSCORE or ZRANGEBYSCORE), then per pod ZINCRBY and HINCRBY
-- inst:<id>: four calls for one connection, six after a refused hint (its
-- ZADD and the undo). No fleet total and no
-- `active` event: the heartbeats publish those (PROTOCOL.md, "The fleet's
-- live count"). TIME only while the epoch is not open (in its recovery
-- wait, and the first call after it).
local load_key, avail_key, inst_key = KEYS[1], KEYS[2], KEYS[3]
local rej_capacity_key, rej_no_pods_key, rejinst_key = KEYS[4], KEYS[5], KEYS[6]
local epoch_key, pend_key = KEYS[7], KEYS[8]
local cap_arg, policy, bucket_arg, slots_arg, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local epoch, run_check, id, want_arg, release_seq = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local hint, hint_lo, hint_hi = ARGV[11], ARGV[12], ARGV[13]
local RELEASES = 14 -- ARGV index of the first released (pod, n, pending)

local open, last = fence(epoch_key, epoch, run_check, id)
if open == nil then return {-1, 'epoch', 0, -1} end
local released = 0
if release_seq ~= '' then
  released = give_back(load_key, avail_key, inst_key, pend_key, last, release_seq, RELEASES)
end
local function refuse(why, ms)
  return {-1, why, ms, released}
end
if not open then
  -- Only here is the clock read. The first call after the wait (over by
  -- Redis' clock and confirmed, or ended early) opens the epoch for the
  -- calls after it, as sync.lua's open_if_over does; until then, how long
  -- the wait still lasts, at least 1 ms while unconfirmed.
  local w = redis.call('HMGET', epoch_key, 'until', 'confirmed')
  local left = (tonumber(w[1]) or 0) - now_ms()
  if w[2] ~= '1' or left > 0 then return refuse('recovering', math.max(left, 1)) end
  redis.call('HSET', epoch_key, 'open', '1')
end
if not last then return refuse('lease', 0) end

local cap, want = tonumber(cap_arg), tonumber(want_arg)
local give = {} -- pod -> connections granted on it
local pods = {} -- the pods of give, in order
local granted = 0
-- The hint (PROTOCOL.md, "Hinted admission"): the pod the caller expects
-- the pick below to choose for one admission, from its last view of the
-- fleet (several go where the pick puts them: a hint is one pod). It is
-- taken without the pick when it is placeable (in avail: XX), has room
-- under the cap, and its count before the admission is within the caller's
-- range [hint_lo, hint_hi] (what the policy allows as far as the caller's
-- view goes). The increment is then the grant's own, so a granted
-- admission on the hint runs the fence, this ZADD and the HINCRBY of
-- inst:<id>. Otherwise the increment is undone, before any other call
-- can see it, and the pick decides as if there had been no hint.
local hinted = false
if hint ~= '' and want == 1 then
  local c = redis.call('ZADD', avail_key, 'XX', 'INCR', 1, hint)
  if c then
    local before = tonumber(c) - 1
    if before < cap and before >= tonumber(hint_lo) and before <= tonumber(hint_hi) then
      give[hint], pods[1], granted, hinted = 1, hint, 1, true
    else
      redis.call('ZADD', avail_key, 'XX', 'INCR', -1, hint)
    end
  end
end
-- n admissions in a row use at most the n pods they would pick first:
-- each of those takes one or more, and a pod further down the order is
-- never better than one of them that is still under the cap.
if hinted then
  -- decided: the hint's pod took them all
elseif policy == 'pack' then
  -- fullest pod under the cap first (empty pods stay empty and can go); it
  -- stays the fullest until it reaches the cap.
  local r = redis.call('ZREVRANGEBYSCORE', avail_key, '(' .. cap, '-inf', 'WITHSCORES', 'LIMIT', 0, want)
  for i = 1, #r, 2 do
    if granted == want then break end
    local n = math.min(cap - tonumber(r[i + 1]), want - granted)
    give[r[i]], pods[#pods + 1], granted = n, r[i], granted + n
  end
else
  -- emptiest first: water-filling. The pods at the lowest count rise
  -- together to the next count (where the next pod joins them) or to the
  -- cap; a last partial round goes to the first of them in the set's
  -- order (count, then name), where admissions in a row would have given
  -- it to the lowest names: the counts are the same, up to which of the
  -- equally loaded pods gets the one more.
  local r = redis.call('ZRANGEBYSCORE', avail_key, '-inf', '(' .. cap, 'WITHSCORES', 'LIMIT', 0, want)
  local m = #r / 2
  if m > 0 then
    local level, k, left, extra = tonumber(r[2]), 0, want, 0
    while true do
      while k < m and tonumber(r[2 * k + 2]) == level do k = k + 1 end
      local to = cap
      if k < m then to = tonumber(r[2 * k + 2]) end
      local room = k * (to - level)
      if left < room then
        level, extra = level + math.floor(left / k), left % k
        break
      end
      left, level = left - room, to
      if level == cap or left == 0 then break end
    end
    for j = 1, k do
      local pod, n = r[2 * j - 1], level - tonumber(r[2 * j])
      if j <= extra then n = n + 1 end
      if n > 0 then give[pod], pods[#pods + 1], granted = n, pod, granted + n end
    end
  end
end
local reply = {granted, '', released, hinted and 1 or 0}
for _, pod in ipairs(pods) do
  local n = give[pod]
  -- picked from avail: its count is there (a hint's is already raised)
  if not hinted then redis.call('ZINCRBY', avail_key, n, pod) end
  redis.call('HINCRBY', inst_key, pod, n)
  reply[#reply + 1], reply[#reply + 2] = pod, n
end
local refused = want - granted
if refused > 0 then
  local reason, ring = 'capacity', rej_capacity_key
  if redis.call('ZCARD', avail_key) == 0 then reason, ring = 'no_pods', rej_no_pods_key end
  local bucket, slots = tonumber(bucket_arg), tonumber(slots_arg)
  ring_add(rejinst_key, reason .. ':', bucket, slots, refused)
  -- Publishing once per bucket is enough to wake a scaler waiting for the
  -- first rejection, and keeps a rejection storm off the pub/sub bus.
  if ring_add(ring, '', bucket, slots, refused) then
    redis.call('PUBLISH', channel, reason)
  end
  reply[2] = reason
end
return reply
