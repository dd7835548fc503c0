-- setpods: replace the fleet's pod registry (written by discovery or by the
-- static pod list). A pod is placeable (in avail) only when ready and not
-- draining; a pod that stops being placeable, or leaves the registry, keeps
-- its live count (in load) until its connections close.
-- KEYS: 1 pods, 2 avail, 3 load, 4 stats
-- ARGV: 1 n, then n x (address, json, ready 0|1, draining 0|1)
local keep = {}
local n = tonumber(ARGV[1])
local ready, draining = 0, 0
for j = 0, n - 1 do
  local base = 2 + j * 4
  local pod, doc = ARGV[base], ARGV[base + 1]
  local r, d = ARGV[base + 2] == '1', ARGV[base + 3] == '1'
  keep[pod] = true
  redis.call('HSET', KEYS[1], pod, doc)
  if r then ready = ready + 1 end
  if r and d then draining = draining + 1 end
  -- Move the pod's count to where it belongs now (see lib.lua).
  local n = count(KEYS[3], KEYS[2], pod)
  if r and not d then
    redis.call('ZREM', KEYS[3], pod)
    redis.call('ZADD', KEYS[2], n, pod)
  else
    redis.call('ZREM', KEYS[2], pod)
    if n > 0 then redis.call('ZADD', KEYS[3], n, pod) end
  end
end
for _, pod in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not keep[pod] then
    redis.call('HDEL', KEYS[1], pod)
    local n = count(KEYS[3], KEYS[2], pod)
    redis.call('ZREM', KEYS[2], pod)
    if n > 0 then redis.call('ZADD', KEYS[3], n, pod) end
  end
end
redis.call('HSET', KEYS[4], 'pods', n, 'ready', ready, 'draining', draining)
return n
