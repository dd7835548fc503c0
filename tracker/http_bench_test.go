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

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// BenchmarkAdmitHTTP is the admission round trip as Envoy's httpCall makes
// it: POST /v1/admit over a kept-alive loopback connection to the tracker's
// HTTP server, one admit script on a real redis-server, the answer back. It
// paces admissions at 2,000/s (open loop: each starts at its slot, however
// long the previous ones took), releases every admitted connection so the
// fleet never fills, and reports p50/p99 next to what the admission is
// made of, each paced the same in the same run: a bare HTTP round trip to
// /healthz and a bare Redis PING (ratios to their sum compare across
// machines).
//
// redis has reuse off, so that every admission asks Redis (the release of
// another worker's connection riding on its call); churn is as it runs,
// where an admission that comes while a release is queued takes its slot
// back without a call (PROTOCOL.md, "Reuse"; reused/op says how many did).
func BenchmarkAdmitHTTP(b *testing.B) {
	b.Run("redis", func(b *testing.B) { benchAdmitHTTP(b, false) })
	b.Run("churn", func(b *testing.B) { benchAdmitHTTP(b, true) })
}

func benchAdmitHTTP(b *testing.B, reuse bool) {
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
	tr, err := tracker.New(tracker.Config{InstanceID: "bench-http", Fleets: []fleets.Fleet{
		{Name: "bench", MaxConnectionsPerPod: 1 << 20, RatePerSecond: 1e6, Burst: 1e6, Pods: addrs},
	}, Heartbeat: 200 * time.Millisecond, InstanceTTL: time.Second}, store.NewStore(rdb, "wsgate"))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	runTracker(b, tr)
	tracker.SetReuse(tr, "bench", reuse)
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

	// paced runs n calls of op at rate over the workers, open loop: each
	// starts at its slot, however long the previous ones took.
	paced := func(n int, op func() (time.Duration, error)) ([]time.Duration, time.Duration) {
		lat := make([]time.Duration, n)
		errs := make(chan error, workers)
		interval := time.Second / rate
		start := time.Now()
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += workers {
					time.Sleep(time.Until(start.Add(time.Duration(i) * interval))) // pacing, not synchronisation
					d, err := op()
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
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		return lat, elapsed
	}
	b.ResetTimer()
	lat, elapsed := paced(b.N, admit)
	b.StopTimer()
	// The same HTTP round trip to /healthz, which does nothing: what the
	// loopback, net/http and the scheduler cost on this machine now.
	bare, _ := paced(b.N, func() (time.Duration, error) {
		start := time.Now()
		resp, err := client.Get(srv.URL + "/healthz")
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start), nil
	})

	// And a bare Redis PING, paced the same: on a machine whose processes
	// sleep between requests a round trip includes waking them, which a
	// PING in a tight loop never pays.
	ping, _ := paced(b.N, func() (time.Duration, error) {
		start := time.Now()
		err := rdb.Ping(ctx).Err()
		return time.Since(start), err
	})
	p50, p99 := quantiles(lat)
	ping50, ping99 := quantiles(ping)
	bare50, bare99 := quantiles(bare)
	b.ReportMetric(float64(p50.Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(p99.Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "admissions/s")
	b.ReportMetric(testutil.ToFloat64(tr.Metrics().Reused.WithLabelValues("bench"))/float64(b.N+workers*4), "reused/op")
	b.ReportMetric(float64(ping99.Nanoseconds()), "ping-p99-ns")
	b.ReportMetric(float64(bare99.Nanoseconds()), "healthz-p99-ns")
	b.ReportMetric(float64(p50)/float64(ping50+bare50), "p50/(ping+healthz)")
	b.ReportMetric(float64(p99)/float64(ping99+bare99), "p99/(ping+healthz)")
	if counts, _ := tr.LocalCounts("bench"); len(counts) != 0 {
		b.Errorf("connections left after the run: %v", counts)
	}
}
