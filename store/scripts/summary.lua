-- summary: everything the scaler decides on, in one round trip and
-- O(buckets), independent of the number of pods and connections.
-- KEYS: 1 stats, 2 avail, 3 epoch, 4 instances, 5.. rej:<reason> (one per reason)
-- ARGV: 1 prefix, 2 (unused), 3 bucket, 4 w1, 5 w2, 6 w3 (windows, in buckets)
-- Returns {live, pods, ready, draining, placeable, epoch, synced, alive,
--          then per reason: w1, w2, w3, then Redis' clock (ms), then how
--          many instances left on their own (leave.lua)}. Alive is judged
--          by Redis' clock.
local stats_key, avail_key, epoch_key, instances_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local REJ_KEYS = 5 -- KEYS index of the first rejection ring
local prefix, bucket_arg, w1_arg, w2_arg, w3_arg = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local st = redis.call('HMGET', stats_key, 'live', 'pods', 'ready', 'draining', 'left')
local epoch = redis.call('HGET', epoch_key, 'id') or ''
local synced = 0
if epoch ~= '' then synced = redis.call('SCARD', prefix .. 'synced:' .. epoch) end
local out = {
  tonumber(st[1] or '0'), tonumber(st[2] or '0'), tonumber(st[3] or '0'), tonumber(st[4] or '0'),
  redis.call('ZCARD', avail_key), epoch, synced,
  redis.call('ZCOUNT', instances_key, now_ms(), '+inf'),
}
local bucket, w1, w2, w3 = tonumber(bucket_arg), tonumber(w1_arg), tonumber(w2_arg), tonumber(w3_arg)
for k = REJ_KEYS, #KEYS do
  local w = ring_windows(KEYS[k], '', bucket, w1, w2, w3)
  table.insert(out, w[1])
  table.insert(out, w[2])
  table.insert(out, w[3])
end
out[#out + 1] = now_ms()
out[#out + 1] = tonumber(st[5] or '0')
return out
