package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/fx"
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
