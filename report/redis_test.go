package report_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
)

// A real server's clock cannot be set: the scenario runs on it with
// serverClock, and its report must equal the miniredis one (whose tables
// are the golden files) but for what depends on where Redis' clock stood,
// masked in both. Whether each instance is alive and whether chat is in its
// recovery wait, judged by the server's own clock, are compared.
func matchesMiniredis(t *testing.T, sc scenario) {
	t.Helper()
	checkRedisClock(t, sc)
	mini, _ := miniScenario(t)
	got, want := maskedJSON(t, sc), maskedJSON(t, mini)
	if got != want {
		t.Errorf("the report on a real server differs from miniredis' (Redis-clock fields masked)\n--- real ---\n%s\n--- miniredis ---\n%s", got, want)
	}
}

// maskedJSON is the scenario's whole report with the Redis-clock times
// (lease ends, the recovery wait's end and time left, the epoch's id, start
// and age) blanked. A real server's epochs are seconds old, the scenario's
// minutes: the settle time is 0 here, so that readiness is decided by the
// instances alone, on both.
func maskedJSON(t *testing.T, sc scenario) string {
	t.Helper()
	rep := sc.reportSettle(t, 0)
	for _, f := range rep.Fleets {
		if d := f.Detailed; d != nil {
			for i := range d.Instances {
				d.Instances[i].LeaseExpiresAt = time.Time{}
			}
		}
		if r := f.Readiness; r != nil {
			if r.RecoveryUntil != nil {
				r.RecoveryUntil = &time.Time{}
			}
			r.RecoverySecondsLeft = 0
			r.Epoch, r.EpochAgeSeconds = "", 0
			if r.EpochStart != nil {
				r.EpochStart = &time.Time{}
			}
		}
	}
	out, err := json.MarshalIndent(rep, "", "  ")
	must(t, err)
	return string(out)
}

// checkRedisClock: on a real server, the snapshot carries the server's
// clock (this host's: it runs here) and the scripts set leases and the
// recovery wait on it, ttl ahead at most.
func checkRedisClock(t *testing.T, sc scenario) {
	t.Helper()
	snap, err := sc.store.Snapshot(context.Background(), "chat", sc.now)
	must(t, err)
	now := snap.RedisNow
	if d := time.Since(now); d < -time.Minute || d > time.Minute {
		t.Fatalf("RedisNow %s is not the server's clock (this host's is %s)", now, time.Now())
	}
	for _, in := range snap.Instances {
		if in.LeaseUntil.After(now.Add(ttl)) || in.LeaseUntil.Before(now.Add(-time.Minute)) {
			t.Errorf("lease of %s ends %s: not within a lease of Redis' clock %s", in.ID, in.LeaseUntil, now)
		}
	}
	if !snap.RecoveryUntil.After(now) || snap.RecoveryUntil.After(now.Add(ttl)) {
		t.Errorf("chat's recovery wait ends %s, want within %s after Redis' clock %s", snap.RecoveryUntil, ttl, now)
	}
}

// The same scenario on a real redis-server: the scripts and the reader
// agree on it and on miniredis.
func TestRealRedisMatchesMiniredis(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	sc := buildScenario(t, rdb, serverClock{rdb: rdb}, store.NewStore(rdb, "wsgate"))
	matchesMiniredis(t, sc)
}

// On Redis Cluster the fleets live on different shards: Fleets must scan
// every master, and each fleet's reads stay within its slot.
func TestRedisClusterFindsEveryFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node Redis Cluster")
	}
	cl := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	s := store.NewStore(rdb, "wsgate")
	masters := map[string]bool{}
	for _, f := range []string{"chat", "video"} {
		m, err := rdb.MasterForKey(context.Background(), s.Keys(f).Epoch())
		must(t, err)
		masters[m.Options().Addr] = true
	}
	if len(masters) != 2 {
		t.Fatalf("chat and video share one master: the test would not prove the scan covers every shard")
	}
	sc := buildScenario(t, rdb, serverClock{rdb: rdb}, s)
	rep := sc.report(t)
	if len(rep.Fleets) != 2 {
		t.Fatalf("found %d fleets, want chat and video", len(rep.Fleets))
	}
	matchesMiniredis(t, sc)
}
