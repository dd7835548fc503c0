// Package load is wsgate's load tool (`make bench`): real WebSockets dialled
// through two gateways (the real envoy/wsgate.lua in the Lua host, each
// with its own tracker over HTTP and gRPC access log) in front of backend
// WebSocket pods on loopback, with a real redis-server. It reports the
// admission rate, the admission latency a client sees and its ratio to a
// bare Redis round trip of the same run, the memory of the trackers' process
// and of Redis at 10,000 live connections, and the release latency.
//
// The gateways and the backends run as child processes (the test binary
// re-executed, proc_test.go); this process holds the two trackers and the
// clients, so heap-B/conn is the trackers' state plus the client's end of
// each WebSocket: an upper bound on what a tracker holds per connection.
package load

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/test/wsdial"
)

const fleet = "chat"

// The run's shape. 50 pods × 220 leaves headroom over the target so that
// the last dials are not refused for capacity while earlier slots of failed
// upgrades are still being released.
const (
	target    = 10000
	pods      = 50
	capPerPod = 220
	dialers   = 64
	// releaseSamples connections are closed one at a time, at full load,
	// to time each release alone.
	releaseSamples = 300
	flush          = 10 * time.Second
	lease          = 60 * time.Second

	rampLimit   = 60 * time.Second
	settleLimit = 10 * time.Second
	sampleLimit = 15 * time.Second
	drainLimit  = 30 * time.Second
	dialTimeout = 10 * time.Second
	// This process holds only the clients' end of each connection; each
	// gateway and the backends run in processes of their own (proc_test.go),
	// so that the 40,000 descriptors of 10,000 proxied connections fit a
	// hard limit of 20,000 a process where it cannot be raised.
	fdsPerConn   = 1
	fdsReserve   = 4000 // Redis pools, the admission keep-alive pools (512 a side), gRPC
	pingSamples  = 2000
	redisTimeout = 2 * time.Second
)

// figures is what one run measured.
type figures struct {
	live                  int           // most live connections reached
	rampTime              time.Duration // dialling them
	admit50, admit99      time.Duration
	ping50, ping99        time.Duration
	heapBytes, redisBytes int64 // deltas at live connections
	release50, release99  time.Duration
	released              int           // release samples taken
	drainTime             time.Duration // closing all the rest at once until Redis holds none
	refused               map[string]int
	redisLiveSeen         int64
}

// BenchmarkLoad dials 10,000 WebSockets through two gateways once per
// invocation and reports what the README promises to measure. b.N drives
// only bare Redis PINGs after the run (so ns/op is a Redis round trip on
// this machine); run it with -benchtime 1x.
func BenchmarkLoad(b *testing.B) {
	redistest.Binary(b, "redis-server")
	f, probe := run(b)
	ctx := context.Background()
	for b.Loop() {
		if err := probe.Ping(ctx).Err(); err != nil {
			b.Fatalf("redis ping: %v", err)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(float64(f.live), "live-conns")
	b.ReportMetric(float64(f.live)/f.rampTime.Seconds(), "admits/s")
	b.ReportMetric(ms(f.admit50), "admit-p50-ms")
	b.ReportMetric(ms(f.admit99), "admit-p99-ms")
	b.ReportMetric(float64(f.ping50)/float64(time.Microsecond), "ping-p50-µs")
	b.ReportMetric(float64(f.admit50)/float64(f.ping50), "admit-p50/ping-p50")
	b.ReportMetric(float64(f.admit99)/float64(f.ping99), "admit-p99/ping-p99")
	b.ReportMetric(float64(f.heapBytes)/(1<<20), "heap-MB")
	b.ReportMetric(float64(f.heapBytes)/float64(f.live), "heap-B/conn")
	b.ReportMetric(float64(f.redisBytes)/(1<<20), "redis-MB")
	b.ReportMetric(float64(f.redisBytes)/float64(f.live), "redis-B/conn")
	b.ReportMetric(ms(f.release50), "release-p50-ms")
	b.ReportMetric(ms(f.release99), "release-p99-ms")
	b.ReportMetric(f.drainTime.Seconds(), "drain-s")
	if f.live < target {
		b.Logf("reached %d live connections, not %d: figures are at %d", f.live, target, f.live)
	}
	if len(f.refused) > 0 {
		b.Logf("refused dials (retried): %v", f.refused)
	}
}

// run is the whole measurement; the Redis client it returns stays usable
// until the benchmark ends.
func run(b *testing.B) (*figures, *redis.Client) {
	b.Helper()
	want := uint64(fdsPerConn*target + fdsReserve)
	limit, err := raiseNofile(want)
	if err != nil {
		b.Logf("open-file limit: %v", err)
	}
	goal := target
	if limit < want {
		goal = int(max(0, int64(limit)-fdsReserve)) / fdsPerConn
		b.Logf("open-file limit %d allows about %d connections, not %d", limit, goal, target)
	}

	srv := redistest.Start(b)
	rdb, err := store.NewRedisClient(store.RedisConfig{Addrs: []string{srv.Addr()}, DialTimeout: time.Second})
	if err != nil {
		b.Fatalf("redis client: %v", err)
	}
	defer rdb.Close()
	probe := srv.Client()
	sys := startSystem(b, rdb, store.NewStore(rdb, "wsgate"), pods, capPerPod, flush, lease)
	defer sys.close()

	f := &figures{refused: map[string]int{}}
	f.ping50, f.ping99 = pingQuantiles(b, probe)
	heap0 := heapInuse()
	redis0 := usedMemory(b, probe)

	conns := make([]*websocket.Conn, goal)
	defer func() {
		// Whatever the run reached is closed before the system goes.
		closeAll(conns)
	}()
	lat, rampTime := ramp(b, sys, conns, f.refused)
	f.rampTime = rampTime
	f.live = len(lat)
	f.admit50, f.admit99 = quantiles(lat)
	if f.live == 0 {
		b.Fatalf("no connection admitted (refused: %v)", f.refused)
	}

	// Every admitted connection is counted in Redis before anything is read at "live connections".
	ctx := context.Background()
	deadline := time.Now().Add(settleLimit)
	for {
		f.redisLiveSeen, err = sys.redisLive(ctx)
		if err == nil && f.redisLiveSeen == int64(f.live) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("after the ramp: %d admitted, Redis counts %d (%v); refused dials: %v", f.live, f.redisLiveSeen, err, f.refused)
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.heapBytes = int64(heapInuse()) - int64(heap0)
	f.redisBytes = usedMemory(b, probe) - redis0

	var rel []time.Duration
	rel, conns = releaseEach(b, sys, conns)
	f.released = len(rel)
	f.release50, f.release99 = quantiles(rel)

	start := time.Now()
	closeAll(conns)
	deadline = start.Add(drainLimit)
	for {
		n, err := sys.redisLive(ctx)
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("Redis still counts %d live connections %s after every client closed (%v)", n, drainLimit, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.drainTime = time.Since(start)
	return f, probe
}

// ramp fills conns through both gateways with dialers concurrent clients,
// retrying refused dials, and returns each admitted dial's latency (to the
// completed handshake) and the wall time of the whole ramp.
func ramp(b *testing.B, sys *system, conns []*websocket.Conn, refused map[string]int) ([]time.Duration, time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rampLimit)
	defer cancel()
	var (
		next     atomic.Int64
		mu       sync.Mutex
		lat      = make([]time.Duration, 0, len(conns))
		failures atomic.Int64
		wg       sync.WaitGroup
	)
	start := time.Now()
	for w := range dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := sys.nodes[w%len(sys.nodes)].url
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) {
					return
				}
				for ctx.Err() == nil {
					t0 := time.Now()
					c, reason, err := dial(ctx, url)
					d := time.Since(t0)
					if err == nil {
						conns[i] = c
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
						break
					}
					mu.Lock()
					refused[reason]++
					mu.Unlock()
					// A run that mostly fails is a broken setup, not a figure.
					if failures.Add(1) > int64(len(conns)) {
						cancel()
					}
					time.Sleep(10 * time.Millisecond)
				}
				if ctx.Err() != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return lat, time.Since(start)
}

// dial opens one WebSocket; a refusal is named by the gateway's status and
// the tracker's reason header.
func dial(ctx context.Context, url string) (*websocket.Conn, string, error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	r := wsdial.Dial(dctx, url, nil)
	if r.Err == nil {
		return r.Conn, "", nil
	}
	reason := "error"
	switch {
	case r.Status != 0:
		reason = strconv.Itoa(r.Status)
		if r.Reason != "" {
			reason += " " + r.Reason
		}
	case errors.Is(r.Err, context.DeadlineExceeded):
		reason = "timeout"
	case strings.Contains(r.Err.Error(), "too many open files"):
		reason = "EMFILE"
	}
	return nil, reason, fmt.Errorf("dial %s: %w", url, r.Err)
}

// releaseEach closes up to releaseSamples connections one at a time and
// times each from the client's close to its slot being free in Redis. It
// returns the latencies and the connections still open.
func releaseEach(b *testing.B, sys *system, conns []*websocket.Conn) ([]time.Duration, []*websocket.Conn) {
	b.Helper()
	ctx := context.Background()
	end := time.Now().Add(sampleLimit)
	var lat []time.Duration
	i := 0
	for ; i < len(conns) && i < releaseSamples && time.Now().Before(end); i++ {
		c := conns[i]
		if c == nil {
			continue
		}
		before, err := sys.redisLive(ctx)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		_ = c.Close(websocket.StatusNormalClosure, "")
		conns[i] = nil
		for {
			n, err := sys.redisLive(ctx)
			if err == nil && n < before {
				lat = append(lat, time.Since(start))
				break
			}
			if time.Since(start) > 5*time.Second {
				b.Fatalf("slot not free in Redis 5s after close: live %d (%v)", n, err)
			}
		}
	}
	return lat, conns[i:]
}

// closeAll closes every connection concurrently and waits for the close
// handshakes (each bounded by the library's own timeout).
func closeAll(conns []*websocket.Conn) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) {
					return
				}
				if c := conns[i]; c != nil {
					_ = c.Close(websocket.StatusNormalClosure, "")
					conns[i] = nil
				}
			}
		}()
	}
	wg.Wait()
}

// pingQuantiles times bare Redis PING round trips: the baseline admission
// latency is divided by, taken in the same run on the same machine.
func pingQuantiles(b *testing.B, rdb *redis.Client) (p50, p99 time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), redisTimeout*pingSamples/100)
	defer cancel()
	lat := make([]time.Duration, pingSamples)
	for i := range lat {
		start := time.Now()
		if err := rdb.Ping(ctx).Err(); err != nil {
			b.Fatalf("redis ping: %v", err)
		}
		lat[i] = time.Since(start)
	}
	return quantiles(lat)
}

// heapInuse is the process's in-use heap after garbage is collected, so
// that deltas measure what is held, not what is waiting to be swept.
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// usedMemory is Redis's INFO memory used_memory.
func usedMemory(b *testing.B, rdb *redis.Client) int64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), redisTimeout)
	defer cancel()
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		b.Fatalf("redis info memory: %v", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatalf("redis used_memory %q: %v", v, err)
			}
			return n
		}
	}
	b.Fatalf("redis info memory has no used_memory:\n%s", info)
	return 0
}

// quantiles returns the p50 and p99 of d (sorted in place).
func quantiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2], d[len(d)*99/100]
}
