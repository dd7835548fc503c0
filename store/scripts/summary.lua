-- summary: everything the scaler decides on, in one round trip and
-- O(buckets), independent of the number of pods and connections.
-- KEYS: 1 stats, 2 avail, 3 epoch, 4 instances, 5.. rej:<reason> (one per reason)
-- ARGV: 1 prefix, 2 (unused), 3 bucket, 4 w1, 5 w2, 6 w3 (windows, in buckets)
-- Returns {live, pods, ready, draining, placeable, epoch, synced, alive,
--          then per reason: w1, w2, w3, then Redis' clock (ms), then how
--          many instances left on their own (leave.lua)}. Alive is judged
--          by Redis' clock.
local st = redis.call('HMGET', KEYS[1], 'live', 'pods', 'ready', 'draining', 'left')
local epoch = redis.call('HGET', KEYS[3], 'id') or ''
local synced = 0
if epoch ~= '' then synced = redis.call('SCARD', ARGV[1] .. 'synced:' .. epoch) end
local out = {
  tonumber(st[1] or '0'), tonumber(st[2] or '0'), tonumber(st[3] or '0'), tonumber(st[4] or '0'),
  redis.call('ZCARD', KEYS[2]), epoch, synced,
  redis.call('ZCOUNT', KEYS[4], now_ms(), '+inf'),
}
local bucket, w1, w2, w3 = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
for k = 5, #KEYS do
  local w = ring_windows(KEYS[k], '', bucket, w1, w2, w3)
  table.insert(out, w[1])
  table.insert(out, w[2])
  table.insert(out, w[3])
end
out[#out + 1] = now_ms()
out[#out + 1] = tonumber(st[5] or '0')
return out
