package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/wsgate/wsgate/test/redistest"
)

func fleetsFile(t *testing.T, doc string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fleets.yaml")
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTrackerConfigErrorsNameTheFlag: wrong flags and fields are reported
// first, in their own words, before anything is built.
func TestTrackerConfigErrorsNameTheFlag(t *testing.T) {
	good := fleetsFile(t, "fleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n")
	twice := fleetsFile(t, "fleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n- name: chat\n  pods: ['10.0.0.2:80']\n")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--config", good, "--heartbeat", "0"}, "--heartbeat 0: must be positive"},
		{[]string{"--config", good, "--redis-timeout", "0s"}, "--redis-timeout 0"},
		{[]string{"--config", good, "--heartbeat", "5s", "--instance-ttl", "4s"}, "--instance-ttl 4s: must be longer than --heartbeat 5s"},
		{[]string{"--config", good, "--instance-id", "a b"}, "--instance-id \"a b\""},
		{[]string{"--config", good, "--redis-timeout", "-1s"}, "--redis-timeout -1s: must be positive"},
		{[]string{"--config", good, "--fallback", "maybe"}, "--fallback \"maybe\""},
		{[]string{"--config", good, "--redis-run-check", "info"}, "--redis-run-check \"info\": want cached or per-call"},
		{[]string{"--config", good, "--redis-wait-replicas", "-1"}, "--redis-wait-replicas -1: want 0 (off) or the number of replicas"},
		{[]string{"--config", good, "--redis-wait-replicas", "one"}, "invalid value \"one\" for flag -redis-wait-replicas: want a whole number"},
		{[]string{"--config", good, "--redis-wait-replicas", "1", "--redis-wait-timeout", "100ms"}, "--redis-wait-timeout 100ms: must be shorter than --redis-timeout 100ms"},
		{[]string{"--config", good, "--redis-wait-timeout", "0"}, "--redis-wait-timeout 0: must be positive"},
		{[]string{"--config", good, "--release-linger", "0"}, "--release-linger 0: must be positive (leave it out for the default 50ms)"},
		{[]string{"--config", good, "--release-linger", "-1ms"}, "--release-linger -1ms: must be positive"},
		{[]string{"--config", good, "--release-linger", "2s"}, "--release-linger 2s: must be shorter than --heartbeat 2s"},
		{[]string{"--config", good, "--redis-embedded", "--redis-wait-replicas", "1"}, "--redis-wait-replicas 1: the embedded Redis (--redis-embedded) has no replicas"},
		{[]string{"--config", good, "--redis-replication-check", "maybe"}, "--redis-replication-check \"maybe\": want warn or refuse"},
		{[]string{"--config", good, "--shutdown-listen", ":9103"}, "--shutdown-listen \":9103\": must be a loopback address"},
		{[]string{"--config", twice}, "--config: " + twice + ":4: fleet chat: defined twice (first at line 2)"},
	}
	for _, c := range cases {
		err := runTracker(c.args)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error starting %q", c.args, err, c.want)
		}
	}
}

// TestRootCauseComesFirst: a constructor's error reaches the user without
// fx's wiring text around it.
func TestRootCauseComesFirst(t *testing.T) {
	cause := errors.New("--redis-addr: bad address")
	app := fx.New(fx.NopLogger, fx.Provide(func() (int, error) { return 0, cause }), fx.Invoke(func(int) {}))
	err := runApp(app)
	if err == nil || err.Error() != cause.Error() {
		t.Errorf("runApp: %v, want %v alone", err, cause)
	}
}

// TestReplicationCheckRefusesToStart: --redis-replication-check=refuse
// stops the tracker before it serves when its Redis has a replica that
// admissions do not wait for, and says which flag fixes it.
func TestReplicationCheckRefusesToStart(t *testing.T) {
	primary := redistest.Start(t)
	redistest.StartReplica(t, primary)
	good := fleetsFile(t, "expiredInstances: keep\nfleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n")
	free := func() string { return "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t)) }
	done := make(chan error, 1)
	go func() {
		done <- runTracker([]string{"--config", good, "--redis-addr", primary.Addr(), "--redis-replication-check", "refuse",
			"--listen", free(), "--access-log-listen", free(), "--telemetry-listen", free(), "--log-level", "error"})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "Redis cannot keep the cap under split brain") {
			t.Errorf("refuse with an unwaited replica: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the tracker started (or hung) with --redis-replication-check=refuse and an unwaited replica")
	}
}
