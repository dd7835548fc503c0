-- scaledown: the pod-cost hook replaces a fleet's scale-down order (the
-- pods to remove, first to go first) in one step, so a reader never sees
-- half of an order. A script rather than MULTI/EXEC: the documented ACL
-- (README.md) grants EVALSHA, not MULTI and EXEC.
local order_key = KEYS[1]
-- ARGV: the pods, in order.
redis.call('DEL', order_key)
for i = 1, #ARGV do
  redis.call('ZADD', order_key, i - 1, ARGV[i])
end
return #ARGV
