// Package gateway is the stand-in for Envoy where Envoy cannot run (tests,
// `wsgate demo`, the load tool; README: Tests). Per request it matches a
// route table (RouteTable, Envoy's RouteConfiguration: virtual hosts by
// domain, routes by path and headers, per-route filter metadata), runs the
// real envoy/wsgate.lua in the Lua host with the tracker cluster mapped to
// its tracker's admission API, and sends an admitted WebSocket upgrade to
// the host the route's cluster selects as Envoy would: the ORIGINAL_DST
// cluster connects to exactly the pod in the dynamic metadata
// wsgate.upstream; an endpoint cluster (Cluster, with per-endpoint health
// that a test changes at runtime as EDS would) honours the filter's
// setUpstreamOverrideHost as Envoy's source says (cluster.go), strict or
// not. Never to anything a client sent. Every admitted request is reported
// over Envoy's gRPC access log (envoy.service.accesslog.v3) to the tracker:
// established, periodic while it lives, and its end, also when it ended in
// a local reply.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/envoy/luahost"
)

// metadataNS is the dynamic metadata namespace wsgate.lua writes.
const metadataNS = "wsgate"

// Config configures a Gateway. TrackerURL and AccessLogAddr are required.
type Config struct {
	// TrackerURL is the base URL of the tracker's admission API
	// ("http://127.0.0.1:9090").
	TrackerURL string
	// AccessLogAddr is the tracker's gRPC access-log listener ("127.0.0.1:9091").
	AccessLogAddr string
	// Routes is the route table. Nil is envoy/envoy.yaml's: WebSocket
	// upgrades to the ORIGINAL_DST cluster with the filter metadata Fleet
	// and AdmitTimeout, anything else 426.
	Routes *RouteTable
	// Fleet is the default route's fleet (the Lua filter's route metadata).
	// Default "default". Only without Routes.
	Fleet string
	// AdmitTimeout is the default route's admit_timeout_ms (the Lua
	// filter's route metadata): how long the filter waits for the tracker.
	// Zero leaves it unset, so the filter's default applies, as with
	// envoy/envoy.yaml. Only without Routes.
	AdmitTimeout time.Duration
	// Clusters are the endpoint clusters routes may name, by name.
	Clusters map[string]*Cluster
	// OriginalDst names the ORIGINAL_DST cluster (metadata_key
	// wsgate.upstream). Default "wsgate_backend".
	OriginalDst string
	// Lua is the filter's code. Default envoy.FilterLua; envoy.WithInstall
	// gives it an install table, as the Helm chart does.
	Lua []byte
	// TrackerCluster is the cluster name whose httpCall reaches TrackerURL.
	// Default "wsgate_tracker"; an install table's tracker_cluster must
	// name it.
	TrackerCluster string
	// NodeID names this gateway in the access-log stream identifier.
	// Default "gateway".
	NodeID string
	// FlushInterval is Envoy's access_log_flush_interval: how often a live
	// tunnel sends a DownstreamPeriodic entry. Default 1s.
	FlushInterval time.Duration
	// LogBuffer is how many access-log entries may wait for the stream
	// before new ones are dropped. Default 65536.
	LogBuffer int
	// Logger receives the gateway's and the script's logs. Default slog.Default().
	Logger *slog.Logger
}

// Gateway is a running Envoy stand-in. Create it with New, Serve it on a
// listener, and Close it.
type Gateway struct {
	cfg    Config
	routes *RouteTable
	odst   originalDst
	filter *luahost.Filter
	proxy  *httputil.ReverseProxy
	trans  *http.Transport
	admit  *http.Client
	cc     *grpc.ClientConn
	logs   *logStream
	srv    *http.Server
	log    *slog.Logger

	ctx    context.Context // cancelled by Close: every tunnel ends
	cancel context.CancelFunc
	// sendCtx outlives ctx so that the tunnels' last entries can be sent.
	sendCtx    context.Context
	sendCancel context.CancelFunc
	drain      chan struct{}
	sender     sync.WaitGroup // the access-log sender

	mu       sync.Mutex
	closing  bool
	handlers sync.WaitGroup
	once     sync.Once

	healthFailed atomic.Bool
	drainOnce    sync.Once
}

// AdminHandler is the part of Envoy's admin API a terminating pod uses,
// as Envoy answers it: POST /healthcheck/fail, POST
// /drain_listeners?graceful (the listeners close; established tunnels go
// on until they end, as upgraded streams do in Envoy's drain), and GET
// /ready (503 once the health check failed). Serve it on its own listener;
// closing that listener is Envoy gone.
func (g *Gateway) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /healthcheck/fail", func(w http.ResponseWriter, _ *http.Request) {
		g.healthFailed.Store(true)
		_, _ = io.WriteString(w, "OK\n")
	})
	mux.HandleFunc("POST /drain_listeners", func(w http.ResponseWriter, _ *http.Request) {
		// Shutdown closes the listeners and waits only for requests in
		// flight: hijacked (upgraded) connections are not its to close.
		g.drainOnce.Do(func() { go func() { _ = g.srv.Shutdown(context.Background()) }() })
		_, _ = io.WriteString(w, "OK\n")
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if g.healthFailed.Load() {
			http.Error(w, "DRAINING", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "LIVE\n")
	})
	return mux
}

// New loads envoy/wsgate.lua and opens the access-log connection (lazily:
// a tracker not yet listening is retried as Envoy would).
func New(cfg Config) (*Gateway, error) {
	if cfg.TrackerURL == "" || cfg.AccessLogAddr == "" {
		return nil, errors.New("gateway: TrackerURL and AccessLogAddr are required")
	}
	if cfg.OriginalDst == "" {
		cfg.OriginalDst = "wsgate_backend"
	}
	if cfg.TrackerCluster == "" {
		cfg.TrackerCluster = "wsgate_tracker"
	}
	if cfg.Lua == nil {
		cfg.Lua = envoy.FilterLua
	}
	routes := cfg.Routes
	if routes == nil {
		if cfg.Fleet == "" {
			cfg.Fleet = "default"
		}
		routes = defaultRoutes(cfg)
	} else if cfg.Fleet != "" || cfg.AdmitTimeout != 0 {
		return nil, errors.New("gateway: Fleet and AdmitTimeout configure the default route: with Routes, set them in the routes' filter metadata")
	}
	if cfg.Clusters[cfg.OriginalDst] != nil {
		return nil, fmt.Errorf("gateway: cluster %q is both the ORIGINAL_DST cluster and an endpoint cluster: Envoy refuses two clusters of one name", cfg.OriginalDst)
	}
	if err := routes.check(func(name string) bool { return name == cfg.OriginalDst || cfg.Clusters[name] != nil }); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "gateway"
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = time.Second
	}
	if cfg.LogBuffer <= 0 {
		cfg.LogBuffer = 1 << 16
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	g := &Gateway{cfg: cfg, routes: routes, log: cfg.Logger, drain: make(chan struct{})}
	g.admit = &http.Client{Transport: &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: 30 * time.Second}}
	f, err := luahost.Load(cfg.Lua, luahost.Options{
		Clusters: map[string]string{cfg.TrackerCluster: strings.TrimSuffix(cfg.TrackerURL, "/")},
		Client:   g.admit,
		Logger:   cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.filter = f
	cc, err := grpc.NewClient(cfg.AccessLogAddr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A tracker restarting is back within a second; Envoy's default
		// backoff would leave the stream down far longer than a lease.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: time.Second}, MinConnectTimeout: time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("gateway: access-log client %s: %w", cfg.AccessLogAddr, err)
	}
	g.cc = cc
	g.logs = newLogStream(cc, cfg.NodeID, cfg.LogBuffer, cfg.Logger)
	g.trans = &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		ResponseHeaderTimeout: 5 * time.Second,
		MaxIdleConnsPerHost:   -1,
	}
	g.proxy = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		Transport:      g.trans,
		ModifyResponse: g.upstreamResponded,
		ErrorHandler:   g.upstreamFailed,
		ErrorLog:       nil,
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.sendCtx, g.sendCancel = context.WithCancel(context.Background())
	g.srv = &http.Server{
		Handler:           g,
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return g.ctx },
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	g.sender.Add(1)
	go func() { defer g.sender.Done(); g.logs.run(g.sendCtx, g.drain) }()
	return g, nil
}

// Serve accepts downstream connections on ln until Close.
func (g *Gateway) Serve(ln net.Listener) error {
	if err := g.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("gateway serve: %w", err)
	}
	return nil
}

// Stats reports the access-log entries sent and dropped so far.
func (g *Gateway) Stats() (sent, dropped int64) { return g.logs.sent.Load(), g.logs.dropped.Load() }

// Close stops accepting, ends every tunnel (each reported with its
// DownstreamEnd entry), sends what the access log still holds for up to 2 s,
// and returns once every goroutine of the gateway has ended.
func (g *Gateway) Close() error {
	var err error
	g.once.Do(func() {
		g.mu.Lock()
		g.closing = true
		g.mu.Unlock()
		err = g.srv.Close()
		g.cancel()
		g.handlers.Wait()
		close(g.drain)
		done := make(chan struct{})
		go func() { g.sender.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			g.log.Warn("access-log entries not delivered before close", "queued", len(g.logs.entries))
		}
		g.sendCancel()
		<-done
		if cerr := g.cc.Close(); err == nil {
			err = cerr
		}
		g.trans.CloseIdleConnections()
		g.admit.CloseIdleConnections()
	})
	return err
}

// tunnel is one admitted upgrade, from admission to its end.
type tunnel struct {
	conn, upstream, cluster, remote, authority, path string
	meta                                             *structpb.Struct
	start                                            time.Time
	established                                      chan struct{} // closed on 101
	status                                           int
	headers                                          luahost.Headers // as the filter left them
}

type tunnelKey struct{}

// ServeHTTP is the HTTP connection manager's filter chain and router.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	if g.closing {
		g.mu.Unlock()
		http.Error(w, "gateway shutting down", http.StatusServiceUnavailable)
		return
	}
	g.handlers.Add(1)
	g.mu.Unlock()
	defer g.handlers.Done()

	route := g.routes.match(r)
	var md map[string]map[string]any
	if route != nil {
		md = route.FilterMetadata
	}
	var dec luahost.Decision
	if route != nil && route.LuaDisabled {
		// The filter does not run: the request goes on as it came.
		dec.Headers = requestHeaders(r)
	} else {
		var err error
		if dec, err = g.filter.OnRequest(r.Context(), luahost.Request{
			Headers:       requestHeaders(r),
			RemoteAddr:    r.RemoteAddr,
			RouteMetadata: md,
		}); err != nil {
			g.log.Error("lua host failed", "err", err)
			http.Error(w, "lua host error", http.StatusInternalServerError)
			return
		}
	}
	// A script error continues the request, as in Envoy (the host logged
	// it): whatever the filter set before it decides below.
	wm := dec.Metadata[metadataNS]
	t := &tunnel{remote: r.RemoteAddr, authority: r.Host, path: r.URL.RequestURI(), start: time.Now(), established: make(chan struct{}), headers: dec.Headers}
	t.conn, _ = wm["conn"].(string)
	if t.conn != "" {
		var err error
		if t.meta, err = structpb.NewStruct(wm); err != nil {
			g.log.Error("dynamic metadata not representable", "err", err)
		}
		// Envoy logs every stream; the access log's filter passes those
		// with wsgate.conn. Also when the upgrade failed: the slot taken at
		// admission comes back.
		defer func() { g.logs.enqueue(t.entry(datav3.AccessLogType_DownstreamEnd, t.status)) }()
	}
	switch {
	case dec.Local != nil:
		t.status = dec.Local.Status
		writeLocal(w, dec.Local)
	case route == nil:
		t.status = http.StatusNotFound // the router's NR
		w.WriteHeader(http.StatusNotFound)
	case route.DirectResponse != nil:
		t.status = route.DirectResponse.Status
		for k, vs := range route.DirectResponse.Headers {
			w.Header()[k] = vs
		}
		w.WriteHeader(route.DirectResponse.Status)
		_, _ = io.WriteString(w, route.DirectResponse.Body)
	default:
		t.cluster = route.Cluster
		if c := g.cfg.Clusters[route.Cluster]; c != nil {
			t.upstream = c.chooseHost(dec.OverrideHost)
		} else {
			t.upstream = g.odst.chooseHost(dec.OverrideHost, wm)
		}
		if t.upstream == "" {
			// The router's local reply when the cluster selects no host (UH).
			t.status = http.StatusServiceUnavailable
			http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
			return
		}
		g.tunnel(w, r, t)
	}
}

// tunnel proxies the upgrade and reports it while it lives.
func (g *Gateway) tunnel(w http.ResponseWriter, r *http.Request, t *tunnel) {
	if t.conn == "" {
		// Not admitted (a plain request an endpoint cluster balances):
		// the access log's filter drops its entries.
		g.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tunnelKey{}, t)))
		return
	}
	ended := make(chan struct{})
	var periodic sync.WaitGroup
	periodic.Add(1)
	go func() {
		defer periodic.Done()
		select {
		case <-t.established:
		case <-ended:
			return
		}
		tick := time.NewTicker(g.cfg.FlushInterval)
		defer tick.Stop()
		for {
			select {
			case <-ended:
				return
			case <-tick.C:
				g.logs.enqueue(t.entry(datav3.AccessLogType_DownstreamPeriodic, t.statusSeen()))
			}
		}
	}()
	g.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tunnelKey{}, t)))
	close(ended)
	periodic.Wait()
}

func (t *tunnel) statusSeen() int {
	select {
	case <-t.established:
		return http.StatusSwitchingProtocols
	default:
		return 0
	}
}

// rewrite sends the request to the admitted pod with the headers exactly
// as the filter left them: Envoy strips nothing itself, so neither does
// this, and a broken strip in the filter shows in every e2e test.
func rewrite(pr *httputil.ProxyRequest) {
	t := pr.In.Context().Value(tunnelKey{}).(*tunnel)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = t.upstream
	pr.Out.Host = pr.In.Host
	// ReverseProxy has already dropped the hop-by-hop headers and set the
	// upgrade ones; the end-to-end headers become the filter's.
	for name := range pr.In.Header {
		if !t.headers.Has(name) {
			pr.Out.Header.Del(name)
		}
	}
	for name, vs := range t.headers.HTTP() {
		if pr.Out.Header.Get(name) != "" || pr.In.Header.Get(name) == "" {
			pr.Out.Header[name] = vs
		}
	}
}

// upstreamResponded records the status; a 101 is the moment Envoy logs
// DownstreamTunnelSuccessfullyEstablished.
func (g *Gateway) upstreamResponded(res *http.Response) error {
	t := res.Request.Context().Value(tunnelKey{}).(*tunnel)
	t.status = res.StatusCode
	if res.StatusCode == http.StatusSwitchingProtocols && t.conn != "" {
		g.logs.enqueue(t.entry(datav3.AccessLogType_DownstreamTunnelSuccessfullyEstablished, res.StatusCode))
		close(t.established)
	}
	return nil
}

// upstreamFailed answers as Envoy does when the chosen pod cannot be reached.
func (g *Gateway) upstreamFailed(w http.ResponseWriter, r *http.Request, err error) {
	t := r.Context().Value(tunnelKey{}).(*tunnel)
	if t.status == 0 {
		t.status = http.StatusServiceUnavailable
	}
	if r.Context().Err() != nil {
		return
	}
	g.log.Debug("upstream connect failed", "upstream", t.upstream, "conn", t.conn, "err", err)
	w.Header().Set("x-envoy-upstream-failure", "connect")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, "upstream connect error\n")
}

// requestHeaders presents r as Envoy's header map: pseudo-headers first,
// names in lower case.
func requestHeaders(r *http.Request) luahost.Headers {
	h := luahost.HeadersOf(":method", r.Method, ":path", r.URL.RequestURI(), ":authority", r.Host, ":scheme", "http")
	for name, vs := range r.Header {
		for _, v := range vs {
			h = append(h, luahost.Header{Name: strings.ToLower(name), Value: v})
		}
	}
	return h
}

func writeLocal(w http.ResponseWriter, l *luahost.LocalReply) {
	for _, e := range l.Headers {
		if !strings.HasPrefix(e.Name, ":") {
			w.Header().Add(e.Name, e.Value)
		}
	}
	w.WriteHeader(l.Status)
	_, _ = io.WriteString(w, l.Body)
}
