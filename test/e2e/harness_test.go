// Package e2e runs wsgate end to end on one machine: a real redis-server,
// two gateways (the real envoy/wsgate.lua in the Lua host, proxying real
// WebSockets and streaming Envoy's gRPC access log) each with its own
// tracker, backend WebSocket servers that count their own connections, and
// the KEDA external scaler polled through KEDA's generated client.
package e2e

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/wsgate/wsgate/envoy/gateway"
	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/test/wsbackend"
	"github.com/wsgate/wsgate/tracker"
	"github.com/wsgate/wsgate/tracker/accesslog"
)

var quiet = slog.New(slog.DiscardHandler)

// backend is a pod that counts its own connections (test/wsbackend).
type backend = wsbackend.Backend

func startBackend(t *testing.T) *backend {
	t.Helper()
	b, err := wsbackend.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// node is one Envoy pod: a gateway and its tracker sidecar.
type node struct {
	id     string
	tr     *tracker.Tracker
	gw     *gateway.Gateway
	url    string // ws://gateway/
	admit  *httptest.Server
	grpc   *grpc.Server
	alAddr string
	// admitTO is the filter's admit_timeout_ms on this node's route.
	admitTO time.Duration
	stopHB  context.CancelFunc
	hbDone  chan struct{}
	once    sync.Once
}

type nodeOptions struct {
	cfg     tracker.Config
	flush   time.Duration
	admitTO time.Duration
}

func startNode(t *testing.T, store *store.Store, id string, o nodeOptions) *node {
	t.Helper()
	cfg := o.cfg
	cfg.InstanceID = id
	cfg.Fleets = append([]fleets.Fleet(nil), cfg.Fleets...)
	tr, err := tracker.New(cfg, store, tracker.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	n := &node{id: id, tr: tr, hbDone: make(chan struct{})}
	if err := tr.Heartbeat(context.Background()); err != nil {
		t.Fatalf("first heartbeat of %s: %v", id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.stopHB = cancel
	go func() { defer close(n.hbDone); tr.Run(ctx) }()
	n.admit = httptest.NewServer(tr.Handler(nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.alAddr = ln.Addr().String()
	n.grpc = grpc.NewServer()
	accesslog.New(tr, tr.Metrics().AccessLogEntries, quiet).Register(n.grpc)
	go func() { _ = n.grpc.Serve(ln) }()
	n.admitTO = o.admitTO
	n.startGateway(t, o.flush)
	t.Cleanup(n.stop)
	return n
}

func (n *node) startGateway(t *testing.T, flush time.Duration) {
	t.Helper()
	gw, err := gateway.New(gateway.Config{TrackerURL: n.admit.URL, AccessLogAddr: n.alAddr, Fleet: "chat", NodeID: n.id, FlushInterval: flush, AdmitTimeout: n.admitTO, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.gw, n.url = gw, "ws://"+gl.Addr().String()+"/"
	go func() { _ = gw.Serve(gl) }()
}

// stop shuts the node down in order: the gateway first, so its tunnels'
// DownstreamEnd entries reach the tracker.
func (n *node) stop() {
	n.once.Do(func() {
		_ = n.gw.Close()
		n.grpc.Stop()
		n.admit.Close()
		n.stopHB()
		<-n.hbDone
	})
}

// harness is the whole system on loopback.
type harness struct {
	redis    *redistest.Server
	store    *store.Store
	rdb      redis.UniversalClient // the client store runs on
	backends []*backend
	nodes    []*node
	fleet    fleets.Fleet
	scaler   *scaler.Server
	keda     externalscaler.ExternalScalerClient
}

type harnessOptions struct {
	backends  int
	cap       int
	rate      float64
	burst     int
	heartbeat time.Duration
	lease     time.Duration
	flush     time.Duration
	redisTO   time.Duration // the tracker's --redis-timeout (default 1s)
	admitTO   time.Duration // the filter's admit_timeout_ms (default 5s)
	instTTL   time.Duration
	// fleet adjusts the chat fleet before anything starts (default: the
	// backends as a static pod list, policy pack).
	fleet func(*fleets.Fleet)
	// gate builds the scaler's scale-down gate once Redis and the backends
	// are up (default none).
	gate func(*harness) scaler.ScaleDownGate
}

func newHarness(t *testing.T, o harnessOptions) *harness {
	t.Helper()
	if o.backends == 0 {
		o.backends = 3
	}
	if o.cap == 0 {
		o.cap = 5
	}
	if o.rate == 0 {
		o.rate, o.burst = 10000, 10000
	}
	if o.heartbeat == 0 {
		o.heartbeat = 200 * time.Millisecond
	}
	if o.lease == 0 {
		o.lease = 2 * time.Second
	}
	if o.flush == 0 {
		o.flush = 300 * time.Millisecond
	}
	if o.instTTL == 0 {
		o.instTTL = 5 * o.heartbeat
	}
	// Timeouts a loaded machine meets (make test runs beside CPU hogs):
	// the production defaults (100ms, 250ms) are kept only by the tests
	// about them.
	if o.redisTO == 0 {
		o.redisTO = time.Second
	}
	if o.admitTO == 0 {
		o.admitTO = 5 * time.Second
	}
	h := &harness{redis: redistest.Start(t)}
	rdb, err := store.NewRedisClient(store.RedisConfig{Addrs: []string{h.redis.Addr()}, DialTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	h.store, h.rdb = store.NewStore(rdb, "wsgate"), rdb
	var pods []string
	for range o.backends {
		b := startBackend(t)
		h.backends = append(h.backends, b)
		pods = append(pods, b.Addr)
	}
	h.fleet = fleets.Fleet{Name: "chat", MaxConnectionsPerPod: o.cap, RatePerSecond: o.rate, Burst: o.burst, Pods: pods, RetryAfter: fleets.Duration(3 * time.Second)}
	if o.fleet != nil {
		o.fleet(&h.fleet)
	}
	empty := fleets.Fleet{Name: "empty", MaxConnectionsPerPod: 2, RatePerSecond: 1000, Burst: 1000}
	cfg := tracker.Config{
		Fleets:    []fleets.Fleet{h.fleet, empty},
		Heartbeat: o.heartbeat, InstanceTTL: o.instTTL, LeaseTTL: o.lease,
		EstablishTimeout: o.lease, RedisTimeout: o.redisTO,
	}
	for _, id := range []string{"envoy-a", "envoy-b"} {
		h.nodes = append(h.nodes, startNode(t, h.store, id, nodeOptions{cfg: cfg, flush: o.flush, admitTO: o.admitTO}))
	}
	h.awaitRecovery(t)
	scOpts := []scaler.Option{scaler.WithLogger(quiet)}
	if o.gate != nil {
		scOpts = append(scOpts, scaler.WithGate(o.gate(h)))
	}
	sc, err := scaler.New(scaler.Config{Fleets: []fleets.Fleet{h.fleet, empty}, Settle: time.Millisecond, PollInterval: 100 * time.Millisecond}, h.store, scOpts...)
	if err != nil {
		t.Fatal(err)
	}
	h.scaler = sc
	g := scaler.NewGRPC(sc, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		g.Stop(ctx)
	})
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	h.keda = externalscaler.NewExternalScalerClient(cc)
	return h
}

// awaitRecovery waits until the fleets' epoch grants: an empty Redis (new,
// or restarted) grants nothing for one instance TTL of its own clock. The
// nodes heartbeat in the background, so their leases are current then.
func (h *harness) awaitRecovery(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, f := range []string{"chat", "empty"} {
		if err := h.store.AwaitRecovery(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
}

// spoofed are dial options with upstream headers naming addr, which the
// filter must ignore: a client must not choose its pod.
func spoofed(addr string) *websocket.DialOptions {
	h := http.Header{}
	h.Set("X-Wsgate-Upstream", addr)
	h.Set("X-Envoy-Original-Dst-Host", addr)
	return &websocket.DialOptions{HTTPHeader: h}
}

func (h *harness) backendLive() (live, max int64) {
	for _, b := range h.backends {
		live += b.Live.Load()
		max = maxi(max, b.Max.Load())
	}
	return live, max
}

func maxi(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// live reads the fleet's live count from Redis as the scaler does: the
// totals the trackers' heartbeats published (-1: Redis does not answer).
func (h *harness) live(t *testing.T) int64 {
	t.Helper()
	s, err := h.store.Summary(context.Background(), "chat", time.Now())
	if err != nil {
		return -1
	}
	return s.Live
}

// counted reads the fleet's slots taken in Redis: its pods' counts, which
// an admission or a release moves at once (-1: Redis does not answer).
func (h *harness) counted(t *testing.T) int64 {
	t.Helper()
	loads, err := h.store.PodLoads(context.Background(), "chat")
	if err != nil {
		return -1
	}
	var n int64
	for _, c := range loads {
		n += int64(c)
	}
	return n
}
