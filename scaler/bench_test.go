package scaler_test

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/store"
)

// commands counts the Redis commands the scaler sends: each is one round
// trip (the scaler pipelines nothing).
type commands struct{ n atomic.Int64 }

func (c *commands) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *commands) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *commands) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(1); return next(ctx, cmds) }
}

// BenchmarkGetMetrics measures GetMetrics through KEDA's gRPC client on
// loopback against a real redis-server holding a fleet of `pods` pods and
// 50 tracker instances, all written by the tracker's own scripts.
func BenchmarkGetMetrics(b *testing.B) {
	for _, pods := range []int{100, 10000} {
		b.Run(fmt.Sprintf("pods=%d/instances=50", pods), func(b *testing.B) { benchGetMetrics(b, pods, 50) })
	}
}

func benchGetMetrics(b *testing.B, pods, instances int) {
	fleet := fleets.Fleet{Name: "big", MaxConnectionsPerPod: 100}
	e := start(b, opts{cfg: scaler.Config{Fleets: []fleets.Fleet{fleet}}})
	ctx := context.Background()
	reg := make([]fleets.Pod, pods)
	for i := range reg {
		reg[i] = fleets.Pod{Addr: fmt.Sprintf("10.%d.%d.%d:8080", i/65536, i/256%256, i%256), Ready: true}
	}
	if err := e.store.SetPods(ctx, "big", reg); err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for i := range instances {
		// Every instance holds connections on every pod: the largest
		// state the fleet can have for this many pods and instances.
		counts := make([]store.PodCount, pods)
		for p := range counts {
			counts[p] = store.PodCount{Pod: reg[p].Addr, Live: 1, Established: 1}
		}
		_, err := e.store.Sync(ctx, store.SyncRequest{Fleet: "big", Instance: fmt.Sprintf("envoy-%02d", i), Lease: time.Hour,
			Counts: counts, Rejections: []store.RejectionCount{{Reason: store.ReasonCapacity, Bucket: store.Bucket(now), Count: 3}}})
		if err != nil {
			b.Fatal(err)
		}
	}
	req := &externalscaler.GetMetricsRequest{ScaledObjectRef: ref("fleet", "big")}
	want := float64(pods * instances)
	// Warm up: scripts loaded, connections open.
	if res, err := e.client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref("fleet", "big", "metric", "connections")}); err != nil || res.MetricValues[0].MetricValueFloat != want {
		b.Fatalf("connections = %v, %v, want %v", res, err, want)
	}
	cmds := &commands{}
	e.rdb.AddHook(cmds)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if _, err := e.client.GetMetrics(ctx, req); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	n := len(lat)
	b.ReportMetric(float64(lat[n/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[min(n-1, n*99/100)].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(cmds.n.Load())/float64(n), "redis-rt/op")
}
