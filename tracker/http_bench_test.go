package tracker_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// BenchmarkAdmitHTTP is the admission round trip as Envoy's httpCall makes
// it: POST /v1/admit over a kept-alive loopback connection to the tracker's
// HTTP server, one admit script on a real redis-server, the answer back. It
// paces admissions at 2,000/s (open loop: each starts at its slot, however
// long the previous ones took), releases every admitted connection so the
// fleet never fills, and reports p50/p99 next to a bare Redis PING measured
// in the same run, so the figures compare across machines.
func BenchmarkAdmitHTTP(b *testing.B) {
	const (
		rate    = 2000
		workers = 8 // concurrent calls, like Envoy workers sharing a pool
		pods    = 100
	)
	rs := redistest.Start(b)
	rdb := rs.Client()
	b.Cleanup(func() { rdb.Close() })
	addrs := make([]string, pods)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.1.%d.%d:8080", i/250, i%250+1)
	}
	tr, err := tracker.New(tracker.Config{InstanceID: "bench-http", Fleets: []tracker.FleetConfig{
		{Name: "bench", MaxConnectionsPerPod: 1 << 20, RatePerSecond: 1e6, Burst: 1e6, Pods: addrs},
	}, Heartbeat: 200 * time.Millisecond, InstanceTTL: time.Second}, tracker.NewStore(rdb, "wsgate"))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	runTracker(b, tr)
	srv := httptest.NewServer(tr.Handler(nil))
	b.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	b.Cleanup(client.CloseIdleConnections)

	admit := func() (time.Duration, error) {
		start := time.Now()
		resp, err := client.Post(srv.URL+"/v1/admit", "application/json",
			strings.NewReader(`{"fleet":"bench","client":"203.0.113.7:5000","requestId":"bench"}`))
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("admit: status %d (%s)", resp.StatusCode, resp.Header.Get(tracker.HeaderReason))
		}
		return took, tr.Release(ctx, resp.Header.Get(tracker.HeaderConn))
	}
	for range workers * 4 { // warm the connection pool and the script cache
		if _, err := admit(); err != nil {
			b.Fatal(err)
		}
	}

	lat := make([]time.Duration, b.N)
	errs := make(chan error, workers)
	interval := time.Second / rate
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < b.N; i += workers {
				time.Sleep(time.Until(start.Add(time.Duration(i) * interval))) // pacing, not synchronisation
				d, err := admit()
				if err != nil {
					errs <- err
					return
				}
				lat[i] = d
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}

	ping := make([]time.Duration, max(b.N, 1000))
	for i := range ping {
		t0 := time.Now()
		if err := rdb.Ping(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		ping[i] = time.Since(t0)
	}
	p50, p99 := quantiles(lat)
	ping50, ping99 := quantiles(ping)
	b.ReportMetric(float64(p50.Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(p99.Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(ping50.Nanoseconds()), "ping-p50-ns")
	b.ReportMetric(float64(p50)/float64(ping50), "p50/ping")
	b.ReportMetric(float64(p99)/float64(ping99), "p99/ping-p99")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "admissions/s")
	if counts, _ := tr.LocalCounts("bench"); len(counts) != 0 {
		b.Errorf("connections left after the run: %v", counts)
	}
}
