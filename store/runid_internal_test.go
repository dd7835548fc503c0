package store

import "testing"

// Only a server that keeps scripts out of RDB, AOF and replication (Redis
// 7.0 and later) may answer the run_id from the script cache.
func TestCachedRunID(t *testing.T) {
	const run = "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		info string
		ok   bool
	}{
		{"# Server\r\nredis_version:7.0.15\r\nrun_id:" + run + "\r\n", true},
		{"redis_version:8.2.1\r\nrun_id:" + run + "\r\n", true},
		{"redis_version:7.2.4\r\nvalkey_version:8.0.1\r\nrun_id:" + run + "\r\n", true},
		{"redis_version:6.2.14\r\nrun_id:" + run + "\r\n", false}, // saves and propagates SCRIPT LOAD
		{"redis_version:7.0.15\r\n", false},                       // no run_id
		{"redis_version:7.0.15\r\nrun_id:abc\r\n", false},
		{"run_id:" + run + "\r\n", false}, // no version
	} {
		got, ok := cachedRunID(tc.info)
		if ok != tc.ok || (ok && got != run) {
			t.Errorf("cachedRunID(%q) = %q, %v; want ok %v", tc.info, got, ok, tc.ok)
		}
	}
}
