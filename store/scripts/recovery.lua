-- recovery: ms until the fleet's epoch grants, 0 once it does. At least 1
-- while there is no epoch, while the epoch was made by another Redis
-- process (the next heartbeat opens a new one) and while no tracker has
-- confirmed its wait (see sync.lua). Judged here, on the node that holds
-- the epoch, by that node's clock; 0 once the epoch is open (`open`: the
-- admit script grants without reading the clock from then on).
-- KEYS: 1 epoch. ARGV: 1 run id check (1|0).
local epoch_key, run_check = KEYS[1], ARGV[1]

local e = redis.call('HMGET', epoch_key, 'id', 'run', 'until', 'confirmed', 'open')
if not e[1] or e[2] ~= run_id(run_check) then return 1 end
if e[5] == '1' then return 0 end
local left = math.max(0, (tonumber(e[3]) or 0) - now_ms())
if e[4] ~= '1' then left = math.max(left, 1) end
return left
