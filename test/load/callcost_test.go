package load

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
)

// BenchmarkRedisCallCost measures the Redis CPU of each call a tracker
// makes, one at a time on a real redis-server (INFO cpu before and after a
// block of calls of one kind, divided by the calls): what the README's
// paper estimate of a sharded fleet is built from.
//
//   - admit: one admission asking Redis (admit.lua, one connection, no
//     release carried), on a fleet of 300 pods, policy pack; /hinted: with
//     the tracker's guess of the pick, which the script takes;
//   - release: one connection given back (release.lua);
//   - refused: an admission Redis refuses for capacity (every pod full);
//   - heartbeat/pods=P: one instance's heartbeat (sync.lua) that reports
//     connections on every one of the fleet's P pods, the most a heartbeat
//     carries; heartbeat/pods=P/idle: one that reports none;
//   - heartbeat/instances=I: an idle heartbeat in a fleet of 100 pods and I
//     instances; /watch: one that also reads every instance's seq for its
//     reaper watch (instances.lua; store.Stalled.Due says how often).
//
// Each reports redis-cpu-µs/call and redis-cmds/call (a script's inner
// calls included).
func BenchmarkRedisCallCost(b *testing.B) {
	srv := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	b.Cleanup(func() { rdb.Close() })
	s := store.NewStore(rdb, "wsgate")
	ctx := context.Background()

	for _, hinted := range []bool{false, true} {
		name := "admit+release"
		if hinted {
			name += "/hinted"
		}
		b.Run(name, func(b *testing.B) { admitReleaseCost(b, s, rdb, hinted) })
	}

	b.Run("refused", func(b *testing.B) {
		c := newCostFleet(b, s, "full", 10, 1)
		for range 10 {
			if a, err := s.Admit(ctx, c.admit); err != nil || len(a.Pods) != 1 {
				b.Fatal(a, err)
			}
		}
		r0 := redisCost(b, rdb)
		for range b.N {
			a, err := s.Admit(ctx, c.admit)
			if err != nil || a.Reason != store.ReasonCapacity {
				b.Fatal(a, err)
			}
		}
		r := redisCost(b, rdb).sub(r0)
		b.ReportMetric(r.cpu/float64(b.N)*1e6, "redis-cpu-µs/call")
		b.ReportMetric(r.cmds/float64(b.N), "redis-cmds/call")
	})

	for _, p := range []int{100, 1000, 10000} {
		for _, idle := range []bool{false, true} {
			name := fmt.Sprintf("heartbeat/pods=%d", p)
			if idle {
				name += "/idle"
			}
			b.Run(name, func(b *testing.B) {
				c := newCostFleet(b, s, fmt.Sprintf("hb%d", p), p, 1<<20)
				req := store.SyncRequest{Fleet: c.name, Instance: c.inst, Lease: time.Hour}
				if !idle {
					for _, pod := range c.pods {
						req.Counts = append(req.Counts, store.PodCount{Pod: pod, Live: 1, Established: 1})
					}
				}
				benchHeartbeat(b, s, rdb, req)
			})
		}
	}
	for _, n := range []int{10, 1000} {
		for _, watch := range []bool{false, true} {
			name := fmt.Sprintf("heartbeat/instances=%d", n)
			if watch {
				name += "/watch"
			}
			b.Run(name, func(b *testing.B) {
				c := newCostFleet(b, s, fmt.Sprintf("hbi%d", n), 100, 1<<20)
				for i := 1; i < n; i++ { // c.inst is the first
					if _, err := s.Sync(ctx, store.SyncRequest{Fleet: c.name, Instance: fmt.Sprintf("envoy-%04d", i), Lease: time.Hour, Seq: 1}); err != nil {
						b.Fatal(err)
					}
				}
				benchHeartbeat(b, s, rdb, store.SyncRequest{Fleet: c.name, Instance: c.inst, Lease: time.Hour, WatchInstances: watch})
			})
		}
	}
}

// benchHeartbeat measures req's heartbeat, b.N times with rising seqs.
func benchHeartbeat(b *testing.B, s *store.Store, rdb *redis.Client, req store.SyncRequest) {
	ctx := context.Background()
	var seq uint64 = 10
	r0 := redisCost(b, rdb)
	for range b.N {
		seq++
		req.Seq = seq
		if _, err := s.Sync(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	r := redisCost(b, rdb).sub(r0)
	b.ReportMetric(r.cpu/float64(b.N)*1e6, "redis-cpu-µs/call")
	b.ReportMetric(r.cmds/float64(b.N), "redis-cmds/call")
}

// costFleet is a fleet registered with its pods and one instance joined in
// its epoch, ready to admit.
type costFleet struct {
	name, inst, epoch string
	pods              []string
	admit             store.AdmitRequest
}

// costFleets numbers the fleets newCostFleet makes: each run (of
// -count, and each b.N) gets a fleet of its own, so that no heartbeat's
// seq is below one an earlier run left (sync.lua ignores those).
var costFleets atomic.Int64

func newCostFleet(b *testing.B, s *store.Store, name string, pods, capPerPod int) costFleet {
	b.Helper()
	ctx := context.Background()
	name = fmt.Sprintf("%s-%d", name, costFleets.Add(1))
	c := costFleet{name: name, inst: "e1"}
	var reg []fleets.Pod
	for i := range pods {
		addr := fmt.Sprintf("10.4.%d.%d:8080", i/250, i%250+1)
		c.pods = append(c.pods, addr)
		reg = append(reg, fleets.Pod{Addr: addr, Name: fmt.Sprintf("pod-%d", i), Ready: true})
	}
	if err := s.SetPods(ctx, name, reg); err != nil {
		b.Fatal(err)
	}
	res, err := s.Sync(ctx, store.SyncRequest{Fleet: name, Instance: c.inst, Lease: time.Hour, Seq: 1})
	if err != nil {
		b.Fatal(err)
	}
	// No recovery wait was asked (RecoveryWait 0): the confirmation ends it.
	if _, err := s.Sync(ctx, store.SyncRequest{Fleet: name, Instance: c.inst, Lease: time.Hour, Seq: 2, Confirm: res.Epoch}); err != nil {
		b.Fatal(err)
	}
	c.epoch = res.Epoch
	c.admit = store.AdmitRequest{Fleet: name, MaxPerPod: capPerPod, Policy: fleets.PolicyPack, Instance: c.inst,
		Epoch: c.epoch, Now: time.Now(), N: 1}
	return c
}

// admitReleaseCost is BenchmarkRedisCallCost's admit+release: blocks of
// admissions, one connection each, then their releases. hinted: each
// admission carries the pod the pick would choose as its hint (the
// tracker's guess, "Hinted admission" in PROTOCOL.md), which the script
// takes instead of the pick.
func admitReleaseCost(b *testing.B, s *store.Store, rdb *redis.Client, hinted bool) {
	ctx := context.Background()
	c := newCostFleet(b, s, "cost", 300, 1<<20)
	if hinted {
		a, err := s.Admit(ctx, c.admit)
		if err != nil || len(a.Pods) != 1 {
			b.Fatal(a, err)
		}
		c.admit.Hint = store.Hint{Pod: a.Pods[0], Max: 1 << 20}
	}
	const block = 500
	var admit, release redisStats
	var n int
	for done := 0; done < b.N; done += block {
		k := min(block, b.N-done)
		pods := make([]string, 0, k)
		r0 := redisCost(b, rdb)
		for range k {
			a, err := s.Admit(ctx, c.admit)
			if err != nil || len(a.Pods) != 1 {
				b.Fatal(a, err)
			}
			pods = append(pods, a.Pods[0])
		}
		r1 := redisCost(b, rdb)
		for _, pod := range pods {
			rel := store.ReleaseRequest{Fleet: c.name, Instance: c.inst, Epoch: c.epoch, Seq: 2,
				Releases: []store.ReleaseCount{{Pod: pod, N: 1, Pending: 1}}}
			if got, err := s.Release(ctx, rel); err != nil || got != 1 {
				b.Fatal(got, err)
			}
		}
		r2 := redisCost(b, rdb)
		admit, release, n = admit.add(r1.sub(r0)), release.add(r2.sub(r1)), n+k
	}
	b.ReportMetric(admit.cpu/float64(n)*1e6, "admit-redis-cpu-µs/call")
	b.ReportMetric(release.cpu/float64(n)*1e6, "release-redis-cpu-µs/call")
	b.ReportMetric(admit.cmds/float64(n), "admit-redis-cmds/call")
	b.ReportMetric(release.cmds/float64(n), "release-redis-cmds/call")
}
