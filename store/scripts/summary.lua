-- summary: everything the scaler decides on, in one round trip and
-- O(buckets + instances), independent of the number of pods and
-- connections.
-- KEYS: 1 stats, 2 avail, 3 epoch, 4 instances, 5.. rej:<reason> (one per reason)
-- ARGV: 1 prefix, 2 (unused), 3 bucket, 4 w1, 5 w2, 6 w3 (windows, in buckets)
-- Returns {live, pods, ready, draining, placeable, epoch, synced, alive,
--          then per reason: w1, w2, w3, then Redis' clock (ms), then how
--          many instances left on their own (leave.lua), then how many of
--          the alive ones published a total in this epoch}. Alive is
--          judged by Redis' clock.
-- live is the sum of the totals the instances' heartbeats published in the
-- epoch (h:<id>, sync.lua), over the instances Redis still counts (the
-- members of `instances`: alive, or past their lease and not reaped, whose
-- slots the pods' counts still hold), not a counter the hot scripts keep:
-- an instance removed (reaped, left, forgotten: ZREM) drops out of it at
-- once, whatever became of its h:<id>, so nothing trackers of mixed
-- versions leave behind can drift into it (PROTOCOL.md, "The fleet's live
-- count"). It trails the admissions and releases by up to a heartbeat.
local stats_key, avail_key, epoch_key, instances_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local REJ_KEYS = 5 -- KEYS index of the first rejection ring
local prefix, bucket_arg, w1_arg, w2_arg, w3_arg = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

-- At most this many fields per HMGET: unpack is bounded by Lua's C stack.
local CHUNK = 1000

local now = now_ms()
local st = redis.call('HMGET', stats_key, 'pods', 'ready', 'draining', 'left')
local members = redis.call('ZRANGE', instances_key, 0, -1, 'WITHSCORES')
local ids, lease = {}, {}
for j = 1, #members, 2 do
  ids[#ids + 1] = members[j]
  lease[#ids] = tonumber(members[j + 1])
end
-- The epoch's id with the first totals: one call for a fleet of up to
-- CHUNK instances.
local fields = {'id'}
local epoch, live, alive, published, k = nil, 0, 0, 0, 1
repeat
  for j = k, math.min(k + CHUNK - 1, #ids) do fields[#fields + 1] = 'h:' .. ids[j] end
  local h = redis.call('HMGET', epoch_key, unpack(fields))
  local from = 1
  if k == 1 then epoch, from = h[1] or '', 2 end
  for j = from, #h do
    local n = k + j - from -- the instance's index in ids
    live = live + (tonumber(h[j]) or 0)
    if lease[n] >= now then
      alive = alive + 1
      if h[j] then published = published + 1 end
    end
  end
  fields, k = {}, k + CHUNK
until k > #ids
local synced = 0
if epoch ~= '' then synced = redis.call('SCARD', prefix .. 'synced:' .. epoch) end
local out = {
  live, tonumber(st[1] or '0'), tonumber(st[2] or '0'), tonumber(st[3] or '0'),
  redis.call('ZCARD', avail_key), epoch, synced, alive,
}
local bucket, w1, w2, w3 = tonumber(bucket_arg), tonumber(w1_arg), tonumber(w2_arg), tonumber(w3_arg)
for k = REJ_KEYS, #KEYS do
  local w = ring_windows(KEYS[k], '', bucket, w1, w2, w3)
  table.insert(out, w[1])
  table.insert(out, w[2])
  table.insert(out, w[3])
end
out[#out + 1] = now
out[#out + 1] = tonumber(st[4] or '0')
out[#out + 1] = published
return out
