-- reap: remove instances whose lease ended (run by the scaler too, so counts
-- stay true even when every tracker died).
-- ARGV: 1 prefix, 2 now (ms), 3 limit. Returns the reaped ids.
return reap_expired(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), '')
