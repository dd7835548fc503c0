-- reap: remove instances whose lease ended (run by the scaler too, so counts
-- stay true even when every tracker died).
-- ARGV: 1 prefix, then the ids the caller saw stand still for a lease.
-- Returns the reaped ids.
local prefix = ARGV[1]
local IDS = 2 -- ARGV index of the first id

local ids = {}
for k = IDS, #ARGV do ids[#ids + 1] = ARGV[k] end
return reap_expired(prefix, now_ms(), ids, '')
