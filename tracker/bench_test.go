package tracker_test

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// quantiles returns the p50 and p99 of durations (sorted in place).
func quantiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2], d[len(d)*99/100]
}

func benchTracker(b *testing.B, rdb redis.UniversalClient, pods int) *tracker.Tracker {
	return benchTrackerShards(b, rdb, pods, 1)
}

func benchTrackerShards(b *testing.B, rdb redis.UniversalClient, pods, shards int) *tracker.Tracker {
	b.Helper()
	tr, err := tracker.New(tracker.Config{
		InstanceID: "bench", Fleets: []fleets.Fleet{{Name: "bench", MaxConnectionsPerPod: 1 << 30, RatePerSecond: 1e9, Burst: 1e9, Pods: podAddrs(pods), Shards: shards}},
		Heartbeat: 200 * time.Millisecond, InstanceTTL: time.Second,
	}, store.NewStore(rdb, "wsgate"))
	if err != nil {
		b.Fatal(err)
	}
	runTracker(b, tr)
	return tr
}

// runTracker heartbeats tr in the background, as in production (its lease
// lives on Redis' clock), once the new epoch's recovery wait is over.
func runTracker(b *testing.B, tr *tracker.Tracker) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	wait, stop := context.WithTimeout(ctx, time.Minute)
	defer stop()
	if err := tr.AwaitGranting(wait); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); tr.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
}

// BenchmarkAdmit is one admission followed by its release, sequentially,
// against a real redis-server. Each iteration also times one bare PING,
// interleaved, so the baseline sees the same machine load as the
// admissions: it reports p50/p99 of the admission alone and their ratio to
// the PING's.
//
// redis is the admission Redis decides (token bucket + admit script +
// local record; the previous release rides on its call), with reuse off;
// churn is the same loop as it runs: the previous connection's release is
// still queued, and the admission takes its slot back (PROTOCOL.md,
// "Reuse"). reused/op says how many did.
func BenchmarkAdmit(b *testing.B) {
	b.Run("redis", func(b *testing.B) { benchAdmit(b, false) })
	b.Run("churn", func(b *testing.B) { benchAdmit(b, true) })
}

// BenchmarkAdmitShards is BenchmarkAdmit's redis loop on a fleet of 1 and
// of 3 shards on one redis-server: what the choice of a group costs the
// tracker (no Redis core is gained on one server).
func BenchmarkAdmitShards(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) { benchAdmitShards(b, false, n) })
	}
}

func benchAdmit(b *testing.B, reuse bool) { benchAdmitShards(b, reuse, 1) }

func benchAdmitShards(b *testing.B, reuse bool, shards int) {
	srv := redistest.Start(b)
	rdb := srv.Client()
	tr := benchTrackerShards(b, rdb, 1000, shards)
	tracker.SetReuse(tr, "bench", reuse)
	reused := 0
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	ping := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := rdb.Ping(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		ping = append(ping, time.Since(start))
		start = time.Now()
		res, err := tr.Admit(ctx, "bench")
		lat = append(lat, time.Since(start))
		if err != nil || !res.Admitted {
			b.Fatalf("admit: %+v %v", res, err)
		}
		if res.Reused {
			reused++
		}
		if err := tr.Release(ctx, res.Conn); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(reused)/float64(b.N), "reused/op")
	p50, p99 := quantiles(lat)
	ping50, ping99 := quantiles(ping)
	b.ReportMetric(float64(p50.Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(p99.Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(ping50.Nanoseconds()), "ping-p50-ns")
	b.ReportMetric(float64(p50)/float64(ping50), "p50/ping")
	b.ReportMetric(float64(p99)/float64(ping99), "p99/ping-p99")
}

// BenchmarkAdmitParallel32 is the admission throughput with 32 concurrent
// callers, in admissions per second; the PING throughput with the same 32
// callers is the baseline.
func BenchmarkAdmitParallel32(b *testing.B) {
	srv := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 64})
	b.Cleanup(func() { rdb.Close() }) // after the tracker's: its last releases go out first
	tr := benchTracker(b, rdb, 1000)
	ctx := context.Background()
	run := func(n int, op func() error) time.Duration {
		var wg sync.WaitGroup
		work := make(chan struct{}, n)
		for i := 0; i < n; i++ {
			work <- struct{}{}
		}
		close(work)
		start := time.Now()
		for w := 0; w < 32; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range work {
					if err := op(); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	pingTime := run(20000, func() error { return rdb.Ping(ctx).Err() })
	b.ResetTimer()
	elapsed := run(b.N, func() error {
		res, err := tr.Admit(ctx, "bench")
		if err != nil || !res.Admitted {
			return fmt.Errorf("admit: %+v %v", res, err)
		}
		return tr.Release(ctx, res.Conn)
	})
	b.StopTimer()
	admitsPerSec := float64(b.N) / elapsed.Seconds()
	pingsPerSec := 20000 / pingTime.Seconds()
	b.ReportMetric(admitsPerSec, "admissions/s")
	b.ReportMetric(admitsPerSec/pingsPerSec, "vs-ping-throughput")
}

// BenchmarkMemoryPerConnection fills Redis with 1,000 pods x 10 instances
// holding 100,000 live connections between them, published by the
// instances' own sync, and reports Redis memory per live connection.
func BenchmarkMemoryPerConnection(b *testing.B) {
	const pods, instances, conns = 1000, 10, 100000
	srv := redistest.Start(b)
	rdb := srv.Client()
	ctx := context.Background()
	st := store.NewStore(rdb, "wsgate")
	addrs := podAddrs(pods)
	reg := make([]fleets.Pod, pods)
	for j, a := range addrs {
		reg[j] = fleets.Pod{Addr: a, Name: fmt.Sprintf("backend-%d", j), Node: "node-1", Ready: true}
	}
	used := func() int64 {
		b.Helper()
		info, err := rdb.Info(ctx, "memory").Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		b.Fatal("no used_memory in INFO")
		return 0
	}
	sync := func(counts []store.PodCount) {
		b.Helper()
		for in := 0; in < instances; in++ {
			if _, err := st.Sync(ctx, store.SyncRequest{Fleet: "bench", Instance: fmt.Sprintf("envoy-%d", in), Lease: time.Minute, Counts: counts}); err != nil {
				b.Fatal(err)
			}
		}
	}
	// The registry and the instances exist whatever the number of
	// connections: the baseline is taken with them in place.
	if err := st.SetPods(ctx, "bench", reg); err != nil {
		b.Fatal(err)
	}
	sync(nil)
	before := used()
	counts := make([]store.PodCount, pods)
	for p := range counts {
		counts[p] = store.PodCount{Pod: addrs[p], Live: conns / instances / pods, Established: conns / instances / pods}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ { // each round re-publishes the same truth: a heartbeat of all instances
		sync(counts)
	}
	b.StopTimer()
	sum, err := st.Summary(ctx, "bench", time.Now())
	if err != nil || sum.Live != conns {
		b.Fatalf("live = %d (%v), want %d", sum.Live, err, conns)
	}
	after := used()
	b.ReportMetric(float64(after-before)/conns, "bytes/conn")
	b.ReportMetric(float64(after-before)/(pods*instances), "bytes/(pod*instance)")
}
