package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogsAreJSONWithDurationStrings: durations read "10s", and the Redis
// client's own messages are JSON lines of the same log.
func TestLogsAreJSONWithDurationStrings(t *testing.T) {
	var out lockedBuffer
	log, err := newLoggerTo(&out, "info")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("waiting", "at_most", 10*time.Second)
	// A dial that fails makes go-redis log through its logger.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1})
	_ = rdb.Ping(context.Background()).Err()
	rdb.Close()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var sawRedis bool
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("not a JSON line: %q", l)
			continue
		}
		if m["msg"] == "waiting" && m["at_most"] != "10s" {
			t.Errorf("duration logged as %v, want \"10s\"", m["at_most"])
		}
		sawRedis = sawRedis || m["component"] == "redis"
	}
	if !sawRedis {
		t.Errorf("go-redis did not log through slog:\n%s", out.String())
	}
}

// stderrOf runs f with os.Stderr captured, and returns what it wrote.
func stderrOf(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	func() {
		defer func() { os.Stderr = old; w.Close() }()
		f()
	}()
	return <-done
}

// TestFlagErrorsSayWhatIsWanted: a bad value says what the flag wants,
// not "parse error"; an unknown flag gets its error and a hint, not the
// whole usage, which -h prints, with one default per flag.
func TestFlagErrorsSayWhatIsWanted(t *testing.T) {
	var err error
	out := stderrOf(t, func() { err = runTracker([]string{"--heartbeat", "5"}) })
	if err == nil || !strings.Contains(err.Error(), `invalid value "5" for flag -heartbeat: want a duration such as 5s`) || strings.Contains(err.Error(), "parse error") {
		t.Errorf("--heartbeat 5: %v, want it to ask for a duration such as 5s", err)
	}
	if out != "" {
		t.Errorf("--heartbeat 5 printed %q besides the error", out)
	}
	out = stderrOf(t, func() { err = runTracker([]string{"--hearbeat", "5s"}) })
	if err == nil || err.Error() != "flag provided but not defined: -hearbeat (wsgate tracker -h lists the flags)" {
		t.Errorf("--hearbeat: %v, want the error and a hint", err)
	}
	if out != "" {
		t.Errorf("an unknown flag printed %d lines of usage: %q", strings.Count(out, "\n"), out)
	}
	if err := runScaler([]string{"--redis-db", "one"}); err == nil || !strings.Contains(err.Error(), "want a whole number") {
		t.Errorf("--redis-db one: %v, want it to ask for a whole number", err)
	}
	out = stderrOf(t, func() { err = runTracker([]string{"-h"}) })
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v, want flag.ErrHelp", err)
	}
	if strings.Contains(out, "panic") || !strings.Contains(out, "(default 50ms)") {
		t.Errorf("-h printed a panic, or not the duration flags' defaults: %q", out)
	}
	i := strings.Index(out, "  -instance-id")
	if i < 0 || !strings.Contains(out, "-heartbeat") {
		t.Fatalf("-h printed %q, want the flags", out)
	}
	text := out[i:]
	if j := strings.Index(text[1:], "\n  -"); j >= 0 {
		text = text[:j+1]
	}
	if n := strings.Count(text, "default"); n != 1 {
		t.Errorf("-instance-id's help %q states %d defaults, want one", text, n)
	}
}

// TestRedisClientWarnsEvery30s: during an outage go-redis reports every
// failed dial, each heartbeat (2 s); the log gets one line of each kind
// every 30 s, as the README promises, and that line counts the others.
func TestRedisClientWarnsEvery30s(t *testing.T) {
	var out lockedBuffer
	if _, err := newLoggerTo(&out, "info"); err != nil {
		t.Fatal(err)
	}
	clock := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	l := &redisLogger{every: redisWarnEvery, now: func() time.Time { return clock }, last: map[string]redisLogged{}}
	ctx := context.Background()
	for range 31 { // a minute of heartbeats every 2 s
		l.Printf(ctx, "redis: connection pool: failed to dial after %d attempts: %v", 5, "connection refused")
		clock = clock.Add(2 * time.Second)
	}
	l.Printf(ctx, "sentinel: GetMasterAddrByName addr=%s failed", "10.0.0.1:26379")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("a minute of failed dials every 2 s and one other message logged %d lines, want 4 (at 0, 30 and 60 s, and the other):\n%s", len(lines), out.String())
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &m); err != nil {
		t.Fatal(err)
	}
	if m["repeated"] != float64(14) || m["since"] != "30s" {
		t.Errorf("the second line %s, want repeated 14 since 30s", lines[1])
	}
}
