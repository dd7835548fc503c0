-- setpods: replace the fleet's pod registry (written by discovery or by the
-- static pod list). A pod is placeable (in avail) only when ready and not
-- draining; a pod that stops being placeable, or leaves the registry, keeps
-- its live count (in load) until its connections close.
-- KEYS: 1 pods, 2 avail, 3 load, 4 stats
-- ARGV: 1 n, then n x (address, json, ready 0|1, draining 0|1)
local pods_key, avail_key, load_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n_arg = ARGV[1]
local PODS = 2 -- ARGV index of the first pod's address

local keep = {}
local n = tonumber(n_arg)
local ready, draining = 0, 0
for j = 0, n - 1 do
  local base = PODS + j * 4
  local pod, doc = ARGV[base], ARGV[base + 1]
  local r, d = ARGV[base + 2] == '1', ARGV[base + 3] == '1'
  keep[pod] = true
  redis.call('HSET', pods_key, pod, doc)
  if r then ready = ready + 1 end
  if r and d then draining = draining + 1 end
  -- Move the pod's count to where it belongs now (see lib.lua).
  local n = count(load_key, avail_key, pod)
  if r and not d then
    redis.call('ZREM', load_key, pod)
    redis.call('ZADD', avail_key, n, pod)
  else
    redis.call('ZREM', avail_key, pod)
    if n > 0 then redis.call('ZADD', load_key, n, pod) end
  end
end
for _, pod in ipairs(redis.call('HKEYS', pods_key)) do
  if not keep[pod] then
    redis.call('HDEL', pods_key, pod)
    local n = count(load_key, avail_key, pod)
    redis.call('ZREM', avail_key, pod)
    if n > 0 then redis.call('ZADD', load_key, n, pod) end
  end
end
redis.call('HSET', stats_key, 'pods', n, 'ready', ready, 'draining', draining)
return n
