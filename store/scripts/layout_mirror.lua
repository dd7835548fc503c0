-- layout_mirror: copy the layout group 0 recorded (layout.lua) into its
-- mirror in group 1's tag where the mirror has none or says "record the
-- next" (0), and return the mirror's value: the caller compares the two
-- (PROTOCOL.md, "Shards"). A recorded or frozen mirror is never changed
-- here: only forget-layout writes over it.
-- KEYS: 1 the mirror
-- ARGV: 1 group 0's recorded layout
local mirror_key = KEYS[1]
local v = tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', mirror_key, 'shards'))
if cur == nil or (cur == 0 and v ~= 0) then
  redis.call('HSET', mirror_key, 'shards', v)
  cur = v
end
return cur
