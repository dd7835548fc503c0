-- instances: every instance of the fleet with its seq, for a reaper's watch
-- (store.Stalled). A heartbeat asks for it now and then, not every time: at
-- a thousand instances it costs Redis more than the heartbeat itself
-- (store/sync.go), and one witness of a stalled instance is enough.
-- KEYS: 1 instances, 2 seq.
-- Returns (id, seq, ...).
local instances_key, seq_key = KEYS[1], KEYS[2]

-- The seqs in one HMGET per 1,000 instances, not one HGET each.
local out = {}
local ids = redis.call('ZRANGE', instances_key, 0, -1)
local CHUNK = 1000
for from = 1, #ids, CHUNK do
  local names = {unpack(ids, from, math.min(#ids, from + CHUNK - 1))}
  local seqs = redis.call('HMGET', seq_key, unpack(names))
  for j, name in ipairs(names) do
    out[#out + 1] = name
    out[#out + 1] = seqs[j] or '0'
  end
end
return out
