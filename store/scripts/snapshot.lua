-- snapshot: the whole state of one fleet for operators (wsgate metrics), in
-- one round trip. Read-only; O(pods x instances), so not for the hot path.
-- KEYS: 1 pods, 2 load, 3 instances, 4 stats, 5 epoch, 6 avail
-- ARGV: 1 prefix, 2 bucket, 3 w1, 4 w2, 5 w3, 6.. reasons
-- Returns {pods, load, stats, avail, epoch, synced, instances, rejections,
-- Redis' clock (ms, what leases are judged by), the epoch's recovery wait
-- end (ms of Redis' clock, 0 when unknown), whether a tracker confirmed the
-- wait on its own clock (1|0, see sync.lua)} where
-- instances is a list of {id, lease, live, pending, windows} and
-- windows/rejections are flat lists of (reason, w1, w2, w3).
local prefix = ARGV[1]
local bucket, w1, w2, w3 = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local e = redis.call('HMGET', KEYS[5], 'id', 'until', 'confirmed')
local epoch = e[1] or ''
local until_ms = tonumber(e[2] or '0') or 0
local confirmed = 0
if e[3] == '1' then confirmed = 1 end
local synced = {}
if epoch ~= '' then synced = redis.call('SMEMBERS', prefix .. 'synced:' .. epoch) end

local function windows(key, pfx_of)
  local out = {}
  for k = 6, #ARGV do
    local w = ring_windows(key, pfx_of(ARGV[k]), bucket, w1, w2, w3)
    table.insert(out, ARGV[k])
    table.insert(out, w[1])
    table.insert(out, w[2])
    table.insert(out, w[3])
  end
  return out
end

local inst = {}
local ids = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
for i = 1, #ids, 2 do
  local id = ids[i]
  inst[#inst + 1] = {
    id, ids[i + 1],
    redis.call('HGETALL', prefix .. 'inst:' .. id),
    redis.call('HGETALL', prefix .. 'pend:' .. id),
    windows(prefix .. 'rejinst:' .. id, function(r) return r .. ':' end),
  }
end

local fleet = {}
for k = 6, #ARGV do
  local w = ring_windows(prefix .. 'rej:' .. ARGV[k], '', bucket, w1, w2, w3)
  table.insert(fleet, ARGV[k])
  table.insert(fleet, w[1])
  table.insert(fleet, w[2])
  table.insert(fleet, w[3])
end

return {
  redis.call('HGETALL', KEYS[1]),
  redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', KEYS[4]),
  redis.call('ZRANGEBYSCORE', KEYS[6], 1, '+inf', 'WITHSCORES'),
  epoch, synced, inst, fleet, now_ms(), until_ms, confirmed,
}
