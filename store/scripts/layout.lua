-- layout: record the layout (number of groups) a fleet with shards runs,
-- unless one is recorded, and return the recorded one (PROTOCOL.md,
-- "Shards"). The layout is field 'shards' of a hash in group 0's tag; its
-- mirror, in group 1's tag, is read by the caller before this script and
-- written after it (layout_mirror.lua). Values: N >= 1 the recorded layout,
-- 0 "record the next caller's" (forget-layout), -1 frozen (forget-layout
-- while it checks the drain: nobody records, every tracker refuses Redis).
-- KEYS: 1 layout, 2 group 0's epoch, 3 group 0's instances
-- ARGV: 1 n, the caller's shards; 2 the mirror's value, "" when it has none
local layout_key, epoch_key, instances_key = KEYS[1], KEYS[2], KEYS[3]
local n = tonumber(ARGV[1])
local mirror = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', layout_key, 'shards'))
if cur == nil then
  if mirror ~= nil then
    -- group 0's node lost the layout (an empty restart, a failover that
    -- missed its write): the mirror's survives, whatever the caller runs
    cur = mirror
  elseif redis.call('TYPE', epoch_key).ok ~= 'none' or redis.call('TYPE', instances_key).ok ~= 'none' then
    -- group 0 has state but no layout: a fleet run before the layout
    -- existed, which counts every pod in group 0, i.e. a layout of 1
    cur = 1
  else
    cur = n
  end
  redis.call('HSET', layout_key, 'shards', cur)
end
if cur == 0 then
  cur = n
  redis.call('HSET', layout_key, 'shards', cur)
end
return cur
