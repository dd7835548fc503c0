-- reap: remove instances whose lease ended (run by the scaler too, so counts
-- stay true even when every tracker died).
-- ARGV: 1 prefix, then the ids the caller saw stand still for a lease.
-- Returns the reaped ids.
local ids = {}
for k = 2, #ARGV do ids[#ids + 1] = ARGV[k] end
return reap_expired(ARGV[1], now_ms(), ids, '')
