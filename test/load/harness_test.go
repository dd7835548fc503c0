package load

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/tracker"
	"github.com/wsgate/wsgate/tracker/accesslog"
)

var quiet = slog.New(slog.DiscardHandler)

// node is one Envoy pod: the gateway stand-in running envoy/wsgate.lua and
// its tracker sidecar, wired over HTTP (admission) and gRPC (access log)
// exactly as in production.
type node struct {
	tr     *tracker.Tracker
	gw     *child // the gateway, in its own process
	url    string
	admit  *httptest.Server
	grpc   *grpc.Server
	stopHB context.CancelFunc
	hbDone chan struct{}
	once   sync.Once
}

func startNode(b *testing.B, store *store.Store, id string, cfg tracker.Config, flush time.Duration) *node {
	b.Helper()
	cfg.InstanceID = id
	cfg.Fleets = append([]fleets.Fleet(nil), cfg.Fleets...)
	tr, err := tracker.New(cfg, store, tracker.WithLogger(quiet))
	if err != nil {
		b.Fatalf("tracker %s: %v", id, err)
	}
	// A new Redis epoch grants nothing for one instance TTL.
	await.Granting(b, "tracker "+id, tr, time.Minute)
	n := &node{tr: tr, hbDone: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	n.stopHB = cancel
	go func() { defer close(n.hbDone); tr.Run(ctx) }()
	n.admit = httptest.NewServer(tr.Handler(nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatalf("access-log listen: %v", err)
	}
	n.grpc = grpc.NewServer()
	accesslog.New(tr, tr.Metrics().AccessLogEntries, quiet).Register(n.grpc)
	go func() { _ = n.grpc.Serve(ln) }()
	n.gw = spawn(b, roleGateway, "WSGATE_LOAD_TRACKER="+n.admit.URL, "WSGATE_LOAD_ACCESSLOG="+ln.Addr().String(),
		"WSGATE_LOAD_NODE="+id, "WSGATE_LOAD_FLUSH="+flush.String())
	n.url = "ws://" + n.gw.addrs[0] + "/"
	return n
}

// stop ends the gateway first, so its tunnels' last access-log entries
// still reach the tracker.
func (n *node) stop() {
	n.once.Do(func() {
		n.gw.stop()
		n.grpc.Stop()
		n.admit.Close()
		n.stopHB()
		<-n.hbDone
	})
}

// system is two nodes in front of the backends, sharing one Redis.
type system struct {
	store    *store.Store
	rdb      redis.UniversalClient // the client store runs on
	backends *child
	nodes    []*node
}

func startSystem(b *testing.B, rdb redis.UniversalClient, store *store.Store, pods, capPerPod int, flush, lease time.Duration) *system {
	b.Helper()
	s := &system{store: store, rdb: rdb}
	s.backends = spawn(b, roleBackends, "WSGATE_LOAD_PODS="+strconv.Itoa(pods))
	addrs := s.backends.addrs
	cfg := tracker.Config{
		Fleets: []fleets.Fleet{{
			Name: fleet, MaxConnectionsPerPod: capPerPod, Pods: addrs,
			// The rate limit is not what is measured here.
			RatePerSecond: 1e6, Burst: 1e6,
		}},
		Heartbeat: time.Second, LeaseTTL: lease, EstablishTimeout: lease,
		// Below the Lua filter's 250 ms httpCall timeout, but loose enough
		// that two busy cores do not push admissions into the fallback.
		RedisTimeout: 200 * time.Millisecond,
	}
	for _, id := range []string{"envoy-a", "envoy-b"} {
		s.nodes = append(s.nodes, startNode(b, store, id, cfg, flush))
	}
	return s
}

func (s *system) close() {
	for _, n := range s.nodes {
		n.stop()
	}
	s.backends.stop()
}

// redisLive is the fleet's live count as Redis holds it: its pods' counts,
// which the admit and release scripts move at once.
func (s *system) redisLive(ctx context.Context) (int64, error) {
	return podsLive(ctx, s.rdb, s.store.Keys(fleet))
}

// podsLive sums the pods' counts of the fleet k names (avail and load).
// ZSCAN, which no script and no tracker runs, so that a bench counting
// Redis' commands by name does not count these reads.
func podsLive(ctx context.Context, rdb redis.Cmdable, k store.Keys) (int64, error) {
	var n int64
	for _, key := range []string{k.Avail(), k.Load()} {
		var cursor uint64
		for {
			kv, next, err := rdb.ZScan(ctx, key, cursor, "", 1000).Result()
			if err != nil {
				return 0, fmt.Errorf("read the pods' counts of %s: %w", key, err)
			}
			for i := 1; i < len(kv); i += 2 {
				v, err := strconv.ParseFloat(kv[i], 64)
				if err != nil {
					return 0, fmt.Errorf("read the pods' counts of %s: %q: %w", key, kv[i], err)
				}
				n += int64(v)
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
	}
	return n, nil
}
