package main

import (
	"bytes"
	"context"
	"encoding/json"
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
