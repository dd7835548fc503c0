package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckConfig: --check-config validates flags, fleets file and Redis
// options and returns without reaching anything: port 1 of loopback has no
// Redis, and a run that dialled it would fail.
func TestCheckConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "fleets.yaml")
	if err := os.WriteFile(file, []byte("fleets:\n- name: chat\n  pods: [\"10.0.0.1:8080\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WSGATE_REDIS_ADDR", "127.0.0.1:1")
	for _, tc := range []struct {
		name string
		run  func([]string) error
		args []string
		want string // empty: accepted
	}{
		{"tracker", runTracker, nil, ""},
		{"scaler", runScaler, nil, ""},
		// The instance TTL is the fleets file's, which leaves it out here.
		{"tracker heartbeat", runTracker, []string{"--heartbeat=20s"}, "--config " + file + ": instanceTTL 10s (the default): must be longer than --heartbeat 20s"},
		{"scaler settle", runScaler, []string{"--settle=0s"}, "--settle 0s: must be positive"},
		// scaler.Config's FieldError, named by the flag.
		{"scaler readiness ratio", runScaler, []string{"--readiness-ratio=1.5"}, "--readiness-ratio 1.5: want (0, 1]"},
		{"scaler expected instances", runScaler, []string{"--expected-instances=-1"}, "--expected-instances -1: must not be negative"},
		{"tracker redis db of a cluster", runTracker, []string{"--redis-addr=127.0.0.1:1,127.0.0.1:2", "--redis-db=1"}, "Redis Cluster has only db 0"},
		{"scaler redis master and cluster", runScaler, []string{"--redis-master-name=m", "--redis-cluster"}, "exclude each other"},
		{"tracker log level", runTracker, []string{"--log-level=loud"}, `--log-level "loud"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run(append([]string{"--config=" + file, "--check-config"}, tc.args...))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}
