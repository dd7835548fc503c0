-- snapshot: the whole state of one fleet for operators (wsgate metrics), in
-- one round trip. Read-only; O(pods x instances), so not for the hot path.
-- KEYS: 1 pods, 2 load, 3 instances, 4 epoch, 5 avail
-- ARGV: 1 prefix, 2 bucket, 3 w1, 4 w2, 5 w3, 6.. reasons
-- Returns {pods, load, avail, epoch, synced, instances, rejections,
-- Redis' clock (ms, what leases are judged by), the epoch's recovery wait
-- end (ms of Redis' clock, 0 when unknown), whether a tracker confirmed the
-- wait on its own clock (1|0, see sync.lua)} where
-- instances is a list of {id, lease, live, pending, windows, published
-- total or nil} and
-- windows/rejections are flat lists of (reason, w1, w2, w3).
-- The fleet's live count is not in it: store/snapshot.go sums the pods'
-- counts it returns (load and avail), exact where summary.lua's sum of the
-- heartbeats' totals trails by up to a heartbeat.
local pods_key, load_key, instances_key, epoch_key, avail_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local prefix, bucket_arg, w1_arg, w2_arg, w3_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local REASONS = 6 -- ARGV index of the first reason

local bucket, w1, w2, w3 = tonumber(bucket_arg), tonumber(w1_arg), tonumber(w2_arg), tonumber(w3_arg)
local e = redis.call('HMGET', epoch_key, 'id', 'until', 'confirmed')
local epoch = e[1] or ''
local until_ms = tonumber(e[2] or '0') or 0
local confirmed = 0
if e[3] == '1' then confirmed = 1 end
local synced = {}
if epoch ~= '' then synced = redis.call('SMEMBERS', prefix .. 'synced:' .. epoch) end

local function windows(key, pfx_of)
  local out = {}
  for k = REASONS, #ARGV do
    local w = ring_windows(key, pfx_of(ARGV[k]), bucket, w1, w2, w3)
    table.insert(out, ARGV[k])
    table.insert(out, w[1])
    table.insert(out, w[2])
    table.insert(out, w[3])
  end
  return out
end

local inst = {}
local ids = redis.call('ZRANGE', instances_key, 0, -1, 'WITHSCORES')
for i = 1, #ids, 2 do
  local id = ids[i]
  inst[#inst + 1] = {
    id, ids[i + 1],
    redis.call('HGETALL', prefix .. 'inst:' .. id),
    redis.call('HGETALL', prefix .. 'pend:' .. id),
    windows(prefix .. 'rejinst:' .. id, function(r) return r .. ':' end),
    -- its total as its last heartbeat in this epoch published it (sync.lua),
    -- or nil: none yet, or a tracker of a version that publishes none
    redis.call('HGET', epoch_key, 'h:' .. id),
  }
end

local fleet = {}
for k = REASONS, #ARGV do
  local w = ring_windows(prefix .. 'rej:' .. ARGV[k], '', bucket, w1, w2, w3)
  table.insert(fleet, ARGV[k])
  table.insert(fleet, w[1])
  table.insert(fleet, w[2])
  table.insert(fleet, w[3])
end

return {
  redis.call('HGETALL', pods_key),
  redis.call('ZRANGE', load_key, 0, -1, 'WITHSCORES'),
  redis.call('ZRANGEBYSCORE', avail_key, 1, '+inf', 'WITHSCORES'),
  epoch, synced, inst, fleet, now_ms(), until_ms, confirmed,
}
