-- decision_others: the other triggers' fresh recommendations: those in the
-- index since the cutoff whose hash still exists and holds a recommendation
-- (a held trigger has none: its ScaledObject's fallback decides, not
-- wsgate). The hashes share the index's hash tag.
-- Returns (trigger, recommended) pairs.
local index_key = KEYS[1]
local decision_prefix, cutoff, own = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', index_key, cutoff, '+inf')) do
  if id ~= own then
    local r = redis.call('HGET', decision_prefix .. id, 'recommended')
    if r then out[#out + 1] = id; out[#out + 1] = r end
  end
end
return out
