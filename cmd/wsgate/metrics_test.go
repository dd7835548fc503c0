package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
)

var metricsNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// metricsRedis is a miniredis holding fleet chat: one pod, one connection
// admitted by instance envoy-1 and synced.
func metricsRedis(t *testing.T) *miniredis.Miniredis {
	t.Helper()
	s, mr := storetest.NewMini(t)
	mr.SetTime(metricsNow) // Redis' clock, by which the lease is set and judged
	ctx := context.Background()
	if err := s.SetPods(ctx, "chat", []fleets.Pod{{Addr: "10.0.0.1:8080", Name: "chat-0", Ready: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "envoy-1", Lease: 5 * time.Minute,
		Counts: []store.PodCount{{Pod: "10.0.0.1:8080", Live: 1, Established: 1}}}); err != nil {
		t.Fatal(err)
	}
	mr.SetTime(metricsNow.Add(2 * time.Minute)) // the epoch is past its settle time by Redis' clock
	return mr
}

func runMetricsTest(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := metricsTo(context.Background(), &out, args, func() time.Time { return metricsNow.Add(2 * time.Minute) })
	return out.String(), err
}

func TestMetricsJSONOfOneView(t *testing.T) {
	mr := metricsRedis(t)
	for _, args := range [][]string{
		{"readiness", "--redis-addr", mr.Addr(), "-o", "json"},
		{"--redis-addr", mr.Addr(), "readiness", "-o", "json"}, // the view among the flags
	} {
		checkReadinessJSON(t, args...)
	}
}

func checkReadinessJSON(t *testing.T, args ...string) {
	t.Helper()
	out, err := runMetricsTest(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Views  []string `json:"views"`
		Fleets []struct {
			Name      string `json:"name"`
			Readiness struct {
				Ready  bool `json:"ready"`
				Synced int  `json:"synced"`
			} `json:"readiness"`
		} `json:"fleets"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rep.Views) != 1 || rep.Views[0] != "readiness" || len(rep.Fleets) != 1 || rep.Fleets[0].Name != "chat" ||
		!rep.Fleets[0].Readiness.Ready || rep.Fleets[0].Readiness.Synced != 1 {
		t.Errorf("report %+v, want chat ready with one instance synced", rep)
	}
}

// Leases are times of Redis' clock: an operator's host whose clock is an
// hour ahead (or behind) of Redis' still sees envoy-1 alive, its lease
// judged by Redis' clock, not by the host's.
func TestMetricsJudgesLeasesByRedisClock(t *testing.T) {
	mr := metricsRedis(t)
	for _, skew := range []time.Duration{-time.Hour, time.Hour} {
		var out bytes.Buffer
		err := metricsTo(context.Background(), &out, []string{"--redis-addr", mr.Addr(), "-o", "json"}, func() time.Time { return metricsNow.Add(skew) })
		if err != nil {
			t.Fatal(err)
		}
		var rep struct {
			Fleets []struct {
				Detailed struct {
					Instances []struct {
						ID    string `json:"id"`
						Alive bool   `json:"alive"`
					} `json:"instances"`
				} `json:"detailed"`
				Readiness struct {
					Alive int `json:"alive"`
				} `json:"readiness"`
			} `json:"fleets"`
		}
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		if len(rep.Fleets) != 1 || len(rep.Fleets[0].Detailed.Instances) != 1 || !rep.Fleets[0].Detailed.Instances[0].Alive ||
			rep.Fleets[0].Readiness.Alive != 1 {
			t.Errorf("host clock %s off Redis': %+v, want envoy-1 alive, 1 alive", skew, rep)
		}
	}
}

func TestMetricsTableCapFromConfig(t *testing.T) {
	mr := metricsRedis(t)
	cfg := filepath.Join(t.TempDir(), "fleets.yaml")
	if err := os.WriteFile(cfg, []byte("fleets:\n  - name: chat\n    maxConnectionsPerPod: 7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runMetricsTest(t, "connections", "--redis-addr", mr.Addr(), "--fleet", "chat", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "cap 7 per pod") || !strings.Contains(out, "1/7") {
		t.Errorf("the cap of the fleets file is not shown:\n%s", out)
	}
}

func TestMetricsErrors(t *testing.T) {
	mr := metricsRedis(t)
	empty := miniredis.RunT(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown view", []string{"conections", "--redis-addr", mr.Addr()}, `unknown view "conections"`},
		{"unknown fleet", []string{"--redis-addr", mr.Addr(), "--fleet", "chta"}, `fleet "chta" is unknown: Redis holds no state under {wsgate:chta}: (fleets found: chat)`},
		{"no fleet at all", []string{"--redis-addr", empty.Addr()}, "no fleet found in Redis"},
		{"wrong prefix", []string{"--redis-addr", mr.Addr(), "--redis-prefix", "other"}, `under prefix "other"`},
		{"bad output", []string{"--redis-addr", mr.Addr(), "-o", "yaml"}, `-o "yaml": want table or json`},
		{"bad ratio", []string{"--redis-addr", mr.Addr(), "--readiness-ratio", "95"}, "want a share between 0 and 1"},
		{"two views", []string{"--redis-addr", mr.Addr(), "connections", "scaling"}, `unexpected argument "scaling"`},
		{"unknown view after flags", []string{"--redis-addr", mr.Addr(), "conections"}, `unknown view "conections"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runMetricsTest(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if out != "" {
				t.Errorf("printed %q before failing", out)
			}
		})
	}
}

func TestMetricsRedisRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err = runMetricsTest(t, "--redis-addr", addr)
	if err == nil || !strings.Contains(err.Error(), "reach Redis at "+addr) {
		t.Fatalf("error %v, want one saying Redis at %s cannot be reached", err, addr)
	}
}

// A Redis that accepts connections and never answers must not hang the
// command: --timeout bounds it.
func TestMetricsRedisSilentIsBounded(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	start := time.Now()
	_, err = runMetricsTest(t, "--redis-addr", l.Addr().String(), "--timeout", "300ms")
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Fatalf("error %v, want a timeout after 300ms", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("gave up after %s, want about 300ms", d)
	}
}

// `wsgate metrics scaling` shows one row per trigger's decision (hashes
// scaler:<trigger>, indexed by the zset scalers) and the drain floor.
func TestMetricsScalingShowsEveryTrigger(t *testing.T) {
	mr := metricsRedis(t)
	p := store.FleetKeys("", "chat")
	ms := metricsNow.Add(2 * time.Minute).UnixMilli()
	for _, d := range []struct{ id, rec string }{{"ns/chat@0123abcd", "1"}, {"ns/probe@4567cdef", "2"}} {
		mr.ZAdd(p.Scalers(), float64(ms), d.id)
		mr.HSet(p.Scaler(d.id), "recommended", d.rec, "reported", "2", "drainFloor", "2", "drivenBy", "ns/probe@4567cdef",
			"ready", "1", "readyPods", "1", "updatedMs", strconv.FormatInt(ms, 10), "reason", "capacity target")
	}
	out, err := runMetricsTest(t, "scaling", "--redis-addr", mr.Addr(), "--fleet", "chat")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"scaler: 2 trigger(s)", "ns/chat@0123abcd   reporting  1", "ns/probe@4567cdef  reporting  2",
		"highest fresh recommendation, 2, of trigger ns/probe@4567cdef"} {
		if !strings.Contains(out, want) {
			t.Errorf("scaling view lacks %q:\n%s", want, out)
		}
	}
}
