package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/coder/websocket"
	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"
	"go.uber.org/fx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/wsgate/wsgate/envoy/gateway"
	"github.com/wsgate/wsgate/report"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/tracker"
	"github.com/wsgate/wsgate/tracker/accesslog"
)

// wsgate demo: the whole system on loopback, in one process, then a
// scripted walk through admissions, rejections, releases, the operators'
// views and the scaler's answer. The components are the production ones;
// only Envoy is replaced by envoy/gateway, which runs the real wsgate.lua.

func init() { commands["demo"] = runDemoCommand }

const (
	demoFleet  = "demo"
	demoPrefix = "wsgate"
	// demoSettle replaces the scaler's 60 s settle time: a fresh demo Redis
	// has nothing a restart could have lost, and nobody waits a minute.
	demoSettle = time.Second
	// demoWait bounds every await of the scripted phase.
	demoWait = 10 * time.Second
)

// demoOptions are the demo's flags.
type demoOptions struct {
	redisAddr  string // empty: embedded miniredis
	backends   int
	cap        int
	rate       float64
	listenBase string
	logLevel   string
	// scriptOnly returns after the scripted phase instead of serving until
	// SIGINT/SIGTERM.
	scriptOnly bool
}

func runDemoCommand(args []string) error {
	fs := flag.NewFlagSet("wsgate demo", flag.ContinueOnError)
	var o demoOptions
	fs.StringVar(&o.redisAddr, "redis", "", "use the Redis at this address instead of an embedded in-process one")
	fs.IntVar(&o.backends, "backends", 3, "backend WebSocket servers (pods) to start")
	fs.IntVar(&o.cap, "cap", 2, "maxConnectionsPerPod: connections one pod may hold, all gateways together")
	fs.Float64Var(&o.rate, "rate", 5, "new connections per second each gateway admits")
	fs.StringVar(&o.listenBase, "listen-base", "127.0.0.1:0", "loopback address of the first listener; with a port P, the gateways get P and P+1, the trackers, scaler, Redis and backends the next ports (port 0: free ports)")
	fs.StringVar(&o.logLevel, "log-level", "warn", "level of the components' logs on stderr: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// go-redis logs each failed dial itself; the demo reports the error once.
	redis.SetLogger(quietRedis{})
	return runDemo(os.Stdout, o)
}

// runDemo starts every component, runs the script and then serves until a
// signal (or returns after the script when o.scriptOnly is set).
func runDemo(out io.Writer, o demoOptions) error {
	if o.backends < 1 || o.cap < 1 || o.rate <= 0 {
		return fmt.Errorf("--backends %d, --cap %d, --rate %g: all must be positive", o.backends, o.cap, o.rate)
	}
	if err := requireLoopback("listen-base", o.listenBase); err != nil {
		return err
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
	var scriptErr error
	app := fx.New(
		fxLogger(log),
		fx.Supply(o, log),
		fx.Provide(newDemoListeners, newDemoRedis, newDemoStore, newDemoFleet, newDemoBackends, newDemoNodes, newDemoScaler),
		fx.Invoke(serveDemoGateways, func(lc fx.Lifecycle, sd fx.Shutdowner, d demoSystem) {
			background(lc, func(ctx context.Context) {
				err := runScript(ctx, out, d, o)
				if ctx.Err() != nil {
					return // stopped by a signal mid-script: not a failure
				}
				scriptErr = err
				if err != nil || o.scriptOnly {
					_ = sd.Shutdown()
				}
			})
		}),
	)
	if err := runApp(app); err != nil {
		return err
	}
	return scriptErr
}

// demoSystem is everything the script talks to.
type demoSystem struct {
	fx.In
	Opts     demoOptions
	Redis    demoRedis
	Store    *tracker.Store
	Fleet    tracker.FleetConfig
	Backends []*demoBackend
	Nodes    []*demoNode
	Scaler   *demoScaler
}

// demoListeners binds every listener up front: the trackers' pod lists and
// the gateways' tracker URLs need the addresses before anything starts.
type demoListeners struct {
	gateways, admission, accessLog []net.Listener
	scaler                         net.Listener
	redisAddr                      string // for miniredis, which binds itself
	backends                       []net.Listener
}

func newDemoListeners(lc fx.Lifecycle, o demoOptions) (*demoListeners, error) {
	host, portText, err := net.SplitHostPort(o.listenBase)
	if err != nil {
		return nil, fmt.Errorf("--listen-base %q: %w", o.listenBase, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("--listen-base %q: port %q is not in 0-65535", o.listenBase, portText)
	}
	ls := &demoListeners{}
	var all []net.Listener
	// Closed last (first hook): a failed start leaves no port bound.
	lc.Append(fx.StopHook(func() {
		for _, l := range all {
			_ = l.Close()
		}
	}))
	next := func() string {
		if port == 0 {
			return net.JoinHostPort(host, "0")
		}
		port++
		return net.JoinHostPort(host, strconv.Itoa(port-1))
	}
	listen := func() (net.Listener, error) {
		addr := next()
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("demo listener: %w", err)
		}
		all = append(all, l)
		return l, nil
	}
	for _, group := range []*[]net.Listener{&ls.gateways, &ls.admission, &ls.accessLog} {
		for range 2 {
			l, err := listen()
			if err != nil {
				return nil, err
			}
			*group = append(*group, l)
		}
	}
	if ls.scaler, err = listen(); err != nil {
		return nil, err
	}
	ls.redisAddr = next()
	for range o.backends {
		l, err := listen()
		if err != nil {
			return nil, err
		}
		ls.backends = append(ls.backends, l)
	}
	return ls, nil
}

// demoRedis is the Redis the demo uses and how it was found.
type demoRedis struct {
	Client   redis.UniversalClient
	Addr     string
	Embedded bool
}

func newDemoRedis(lc fx.Lifecycle, o demoOptions, ls *demoListeners) (demoRedis, error) {
	r := demoRedis{Addr: o.redisAddr}
	if r.Addr == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr(ls.redisAddr); err != nil {
			return r, fmt.Errorf("embedded redis on %s: %w", ls.redisAddr, err)
		}
		lc.Append(fx.StopHook(mr.Close))
		r.Addr, r.Embedded = mr.Addr(), true
	}
	rdb, err := openRedis(lc, tracker.RedisConfig{Addrs: []string{r.Addr}, Prefix: demoPrefix, DialTimeout: 2 * time.Second})
	if err != nil {
		return r, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return r, fmt.Errorf("reach Redis at %s: %w", r.Addr, err)
	}
	r.Client = rdb
	return r, nil
}

func newDemoStore(r demoRedis) *tracker.Store { return tracker.NewStore(r.Client, demoPrefix) }

func newDemoFleet(o demoOptions, ls *demoListeners) tracker.FleetConfig {
	pods := make([]string, len(ls.backends))
	for i, l := range ls.backends {
		pods[i] = l.Addr().String()
	}
	return tracker.FleetConfig{
		Name: demoFleet, MaxConnectionsPerPod: o.cap, RatePerSecond: o.rate, Pods: pods,
	}.WithDefaults()
}

// demoBackend is a pod: a WebSocket echo server that counts the
// connections it holds itself, independent of what wsgate says.
type demoBackend struct {
	name string
	addr string
	live atomic.Int64
}

func newDemoBackends(lc fx.Lifecycle, ls *demoListeners, log *slog.Logger) []*demoBackend {
	var bs []*demoBackend
	for i, ln := range ls.backends {
		b := &demoBackend{name: fmt.Sprintf("pod-%d", i+1), addr: ln.Addr().String()}
		bs = append(bs, b)
		ctx, cancel := context.WithCancel(context.Background())
		// Shutdown does not wait for hijacked WebSockets: cancelling the
		// base context ends them.
		srv := &http.Server{Handler: b, ReadHeaderTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
		lc.Append(fx.Hook{
			OnStart: func(context.Context) error {
				go func() {
					if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
						log.Error("server stopped", "server", b.name, "err", err)
					}
				}()
				return nil
			},
			OnStop: func(ctx context.Context) error { cancel(); return srv.Shutdown(ctx) },
		})
	}
	return bs
}

// ServeHTTP answers every message with "<pod>: <message>", so a client
// sees both that its tunnel carries data and which pod it reached.
func (b *demoBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	b.live.Add(1)
	defer b.live.Add(-1)
	for {
		typ, msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, append([]byte(b.name+": "), msg...)); err != nil {
			return
		}
	}
}

// demoNode is one Envoy pod: the gateway and its tracker sidecar.
type demoNode struct {
	name                    string
	tracker                 *tracker.Tracker
	admitURL, accessLogAddr string
	gatewayLn               net.Listener
}

// URL is the node's WebSocket entry point.
func (n *demoNode) URL() string { return "ws://" + n.gatewayLn.Addr().String() + "/" }

func newDemoNodes(lc fx.Lifecycle, ls *demoListeners, store *tracker.Store, fleet tracker.FleetConfig, log *slog.Logger) ([]*demoNode, error) {
	var nodes []*demoNode
	for i, name := range []string{"a", "b"} {
		cfg := tracker.Config{InstanceID: "demo-envoy-" + name, Fleets: []tracker.FleetConfig{fleet}, Heartbeat: time.Second}
		t, err := tracker.New(cfg, store, tracker.WithLogger(log.With("component", "tracker", "instance", cfg.InstanceID)))
		if err != nil {
			return nil, err
		}
		n := &demoNode{
			name: name, tracker: t, gatewayLn: ls.gateways[i],
			admitURL: "http://" + ls.admission[i].Addr().String(), accessLogAddr: ls.accessLog[i].Addr().String(),
		}
		nodes = append(nodes, n)
		// The first heartbeat registers the pods before any admission.
		lc.Append(fx.StartHook(func(ctx context.Context) error {
			if err := t.Heartbeat(ctx); err != nil {
				return fmt.Errorf("first heartbeat of tracker %s: %w", name, err)
			}
			return nil
		}))
		background(lc, t.Run)
		serveListener(lc, ls.admission[i], &http.Server{Handler: t.Handler(nil), ReadHeaderTimeout: 5 * time.Second})
		alog := grpc.NewServer()
		accesslog.New(t, t.Metrics().AccessLogEntries, log.With("component", "accesslog")).Register(alog)
		ln := ls.accessLog[i]
		lc.Append(fx.Hook{
			OnStart: func(context.Context) error { go func() { _ = alog.Serve(ln) }(); return nil },
			OnStop: func(ctx context.Context) error {
				done := make(chan struct{})
				go func() { alog.GracefulStop(); close(done) }()
				select {
				case <-done:
				case <-ctx.Done():
					alog.Stop()
				}
				return nil
			},
		})
	}
	return nodes, nil
}

// serveListener serves srv on an already bound listener from start to stop.
func serveListener(lc fx.Lifecycle, ln net.Listener, srv *http.Server) {
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error { go func() { _ = srv.Serve(ln) }(); return nil },
		OnStop:  srv.Shutdown,
	})
}

// serveDemoGateways starts the gateways after their trackers, so that they
// stop first and their tunnels' last access-log entries reach the trackers.
func serveDemoGateways(lc fx.Lifecycle, nodes []*demoNode, log *slog.Logger) error {
	for _, n := range nodes {
		gw, err := gateway.New(gateway.Config{
			TrackerURL: n.admitURL, AccessLogAddr: n.accessLogAddr, Fleet: demoFleet,
			NodeID: "demo-envoy-" + n.name, Logger: log.With("component", "gateway", "node", n.name),
		})
		if err != nil {
			return err
		}
		ln := n.gatewayLn
		lc.Append(fx.Hook{
			OnStart: func(context.Context) error { go func() { _ = gw.Serve(ln) }(); return nil },
			OnStop:  func(context.Context) error { return gw.Close() },
		})
	}
	return nil
}

// demoScaler is the KEDA external scaler and a client of it made the way
// KEDA makes one.
type demoScaler struct {
	addr string
	keda externalscaler.ExternalScalerClient
}

func newDemoScaler(lc fx.Lifecycle, ls *demoListeners, store *tracker.Store, fleet tracker.FleetConfig, log *slog.Logger) (*demoScaler, error) {
	s, err := scaler.New(scaler.Config{Fleets: []tracker.FleetConfig{fleet}, Settle: demoSettle}, store, scaler.WithLogger(log.With("component", "scaler")))
	if err != nil {
		return nil, err
	}
	g := scaler.NewGRPC(s, nil)
	addr := ls.scaler.Addr().String()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("scaler client %s: %w", addr, err)
	}
	served := make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			go func() { defer close(served); _ = g.Serve(ls.scaler) }()
			return nil
		},
		OnStop: func(ctx context.Context) error {
			_ = cc.Close()
			g.Stop(ctx)
			<-served
			return nil
		},
	})
	return &demoScaler{addr: addr, keda: externalscaler.NewExternalScalerClient(cc)}, nil
}

// runScript is the scripted phase: it fills the fleet past its capacity
// through both gateways, closes some connections and waits for their
// release, then shows the operators' views and the scaler's answer. Unless
// o.scriptOnly, it then holds its remaining connections until ctx ends.
func runScript(ctx context.Context, out io.Writer, d demoSystem, o demoOptions) error {
	p := newDemoPrinter(out)
	slots := len(d.Backends) * d.Fleet.MaxConnectionsPerPod
	extra := max(3, slots/2)
	p.intro(d, slots)

	p.step(1, "open connections until the fleet is full and %d more are refused, alternating gateways", extra)
	var open []*websocket.Conn
	defer func() {
		for _, c := range open {
			c.CloseNow()
		}
	}()
	var capacity, other int
	for n := 1; (len(open) < slots || capacity < extra) && n <= slots+extra+20; n++ {
		node := d.Nodes[(n-1)%len(d.Nodes)]
		p.progress("dialing #%d through gateway %s", n, node.name)
		r := dialDemo(ctx, node, n)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.dial(n, node.name, r)
		switch {
		case r.conn != nil:
			open = append(open, r.conn)
		case r.reason == string(tracker.ReasonCapacity):
			capacity++
		default:
			other++
			if r.reason == string(tracker.ReasonRateLimit) && r.retryAfter > 0 {
				// A polite client waits as told; so does the demo.
				p.progress("gateway %s is rate-limited: waiting %s as Retry-After says", node.name, r.retryAfter)
				if err := sleepCtx(ctx, r.retryAfter); err != nil {
					return err
				}
			}
		}
	}
	p.line("  => %d admitted (the fleet holds %d = %d pods x cap %d), %d refused for capacity, %d otherwise",
		len(open), slots, len(d.Backends), d.Fleet.MaxConnectionsPerPod, capacity, other)
	if err := awaitLive(ctx, p, d, int64(len(open))); err != nil {
		return err
	}

	closeN := max(1, len(open)/2)
	p.step(2, "close %d connections and wait for the trackers to release their slots", closeN)
	closed := time.Now()
	for _, c := range open[:closeN] {
		c.Close(websocket.StatusNormalClosure, "demo")
	}
	open = open[closeN:]
	if err := awaitLive(ctx, p, d, int64(len(open))); err != nil {
		return err
	}
	p.line("  released: Redis and the pods both count %d live connections, %s after the close", len(open), time.Since(closed).Round(time.Millisecond))
	node := d.Nodes[1]
	r := dialDemo(ctx, node, 0)
	p.dial(0, node.name, r)
	if r.conn != nil {
		open = append(open, r.conn)
		p.line("  => a freed slot admits again")
	}

	if err := awaitSettle(ctx, p, d); err != nil {
		return err
	}
	metrics, err := askScaler(ctx, p, d)
	if err != nil {
		return err
	}
	p.step(3, "the scaler, asked through KEDA's externalscaler client at %s", d.Scaler.addr)
	p.scaler(metrics, len(d.Backends))
	// After the scaler has answered, so that the scaling view shows its
	// recommendation.
	p.step(4, "wsgate metrics: the operators' view, read from Redis")
	if err := printViews(ctx, out, d); err != nil {
		// A view is a window on the system, not part of it: say what
		// failed and go on with the demo.
		p.line("  the views could not be shown: %v", err)
	}

	if o.scriptOnly {
		return nil
	}
	p.serving(d, len(open), slots)
	<-ctx.Done()
	return nil
}

// demoDial is one client's attempt through a gateway.
type demoDial struct {
	conn       *websocket.Conn
	status     int
	reason     string
	retryAfter time.Duration
	pod, echo  string
	err        error
}

// dialDemo opens a WebSocket through node's gateway and, once admitted,
// sends one message to learn which pod answers.
func dialDemo(ctx context.Context, node *demoNode, n int) demoDial {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, node.URL(), nil)
	var r demoDial
	if resp != nil {
		r.status, r.reason = resp.StatusCode, resp.Header.Get("X-Wsgate-Reason")
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			r.retryAfter = time.Duration(s) * time.Second
		}
		if resp.Body != nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	if err != nil {
		r.err = err
		return r
	}
	msg := "hello #" + strconv.Itoa(n)
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		c.CloseNow()
		r.err = fmt.Errorf("send through the tunnel: %w", err)
		return r
	}
	_, reply, err := c.Read(ctx)
	if err != nil {
		c.CloseNow()
		r.err = fmt.Errorf("read the echo: %w", err)
		return r
	}
	r.conn, r.echo = c, string(reply)
	if pod, _, ok := strings.Cut(r.echo, ": "); ok {
		r.pod = pod
	}
	return r
}

// awaitLive waits until Redis and the pods themselves both count want live
// connections: releases travel over the gateways' access-log streams.
func awaitLive(ctx context.Context, p *demoPrinter, d demoSystem, want int64) error {
	start := time.Now()
	deadline := start.Add(demoWait)
	for {
		s, err := d.Store.Summary(ctx, d.Fleet.Name, time.Now())
		var pods int64
		for _, b := range d.Backends {
			pods += b.live.Load()
		}
		if err == nil && s.Live == want && pods == want {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("read the live count: %w", err)
			}
			return fmt.Errorf("live connections: Redis counts %d and the pods %d, want %d after %s", s.Live, pods, want, demoWait)
		}
		p.progress("waiting for the counts to settle at %d: Redis %d, pods %d (%s)", want, s.Live, pods, time.Since(start).Round(100*time.Millisecond))
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// awaitSettle waits until Redis's epoch is demoSettle old: before, the
// scaler must hold its metrics and readiness says NOT READY.
func awaitSettle(ctx context.Context, p *demoPrinter, d demoSystem) error {
	s, err := d.Store.Summary(ctx, d.Fleet.Name, time.Now())
	if err != nil {
		return fmt.Errorf("read the epoch: %w", err)
	}
	if s.EpochStart().IsZero() {
		return nil // askScaler will say why the scaler holds
	}
	wait := time.Until(s.EpochStart().Add(demoSettle + 10*time.Millisecond))
	if wait <= 0 {
		return nil
	}
	p.progress("waiting %s for the scaler's settle time", wait.Round(time.Millisecond))
	return sleepCtx(ctx, wait)
}

// scalerMetric is one metric as KEDA reads it: spec, then value.
type scalerMetric struct {
	name          scaler.Metric
	value, target float64
}

// askScaler reads desiredReplicas, connections and saturation the way KEDA
// does, waiting out the scaler's settle time on a fresh Redis.
func askScaler(ctx context.Context, p *demoPrinter, d demoSystem) ([]scalerMetric, error) {
	start := time.Now()
	deadline := start.Add(demoWait)
	var out []scalerMetric
	for _, m := range []scaler.Metric{scaler.MetricDesiredReplicas, scaler.MetricConnections, scaler.MetricSaturation} {
		ref := &externalscaler.ScaledObjectRef{Name: "backend", Namespace: "demo", ScalerMetadata: map[string]string{"fleet": d.Fleet.Name, "metric": string(m)}}
		for {
			v, target, err := readMetric(ctx, d.Scaler.keda, ref)
			if err == nil {
				out = append(out, scalerMetric{name: m, value: v, target: target})
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return nil, fmt.Errorf("ask the scaler for %s: %w", m, err)
			}
			// Unavailable while the epoch is younger than the settle time.
			p.progress("waiting for the scaler to trust the counts (%s)", time.Since(start).Round(100*time.Millisecond))
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func readMetric(ctx context.Context, keda externalscaler.ExternalScalerClient, ref *externalscaler.ScaledObjectRef) (value, target float64, err error) {
	spec, err := keda.GetMetricSpec(ctx, ref)
	if err != nil {
		return 0, 0, err
	}
	if len(spec.MetricSpecs) != 1 {
		return 0, 0, fmt.Errorf("GetMetricSpec: %d metric specs, want 1", len(spec.MetricSpecs))
	}
	res, err := keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: spec.MetricSpecs[0].MetricName})
	if err != nil {
		return 0, 0, err
	}
	if len(res.MetricValues) != 1 {
		return 0, 0, fmt.Errorf("GetMetrics: %d values, want 1", len(res.MetricValues))
	}
	return res.MetricValues[0].MetricValueFloat, spec.MetricSpecs[0].TargetSizeFloat, nil
}

// printViews renders every `wsgate metrics` view of the demo fleet.
func printViews(ctx context.Context, out io.Writer, d demoSystem) error {
	now := time.Now()
	st, err := report.NewReader(d.Store).Read(ctx, d.Fleet.Name, now)
	if err != nil {
		return fmt.Errorf("read fleet %s for the metrics views: %w", d.Fleet.Name, err)
	}
	rep := report.Build([]report.FleetState{st}, report.Options{
		Caps:   map[string]int{d.Fleet.Name: d.Fleet.MaxConnectionsPerPod},
		Settle: demoSettle, ReadinessRatio: 0.95, Now: now,
	})
	return report.WriteTable(out, rep)
}

// demoPrinter writes the demo's lines for a person. On a terminal it also
// keeps one progress line, rewritten in place, while the demo waits.
type demoPrinter struct {
	out        io.Writer
	tty        bool
	progressed bool
}

func newDemoPrinter(out io.Writer) *demoPrinter {
	p := &demoPrinter{out: out}
	if f, ok := out.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *demoPrinter) progress(format string, a ...any) {
	if !p.tty {
		return
	}
	fmt.Fprintf(p.out, "\r\033[K  ... "+format, a...)
	p.progressed = true
}

func (p *demoPrinter) line(format string, a ...any) {
	if p.progressed {
		fmt.Fprint(p.out, "\r\033[K")
		p.progressed = false
	}
	fmt.Fprintf(p.out, format+"\n", a...)
}

func (p *demoPrinter) step(n int, format string, a ...any) {
	p.line("")
	p.line("Step %d: "+format, append([]any{n}, a...)...)
}

func (p *demoPrinter) intro(d demoSystem, slots int) {
	redisWhat := "embedded (in-process miniredis; state is lost on exit)"
	if !d.Redis.Embedded {
		redisWhat = "external (--redis)"
	}
	p.line("wsgate demo: one shared connection cap for a fleet behind two Envoys, on this machine")
	p.line("")
	p.line("  redis       %-26s %s", d.Redis.Addr, redisWhat)
	for _, n := range d.Nodes {
		p.line("  gateway %s   %-26s Envoy stand-in running envoy/wsgate.lua", n.name, n.URL())
		p.line("  tracker %s   %-26s admission API; access log on %s", n.name, n.admitURL, n.accessLogAddr)
	}
	p.line("  scaler      %-26s KEDA external scaler (gRPC)", d.Scaler.addr)
	for _, b := range d.Backends {
		p.line("  %-10s  %-26s WebSocket echo server", b.name, b.addr)
	}
	p.line("")
	p.line("  fleet %q: %d pods x cap %d = %d connections at most, all gateways together;",
		d.Fleet.Name, len(d.Backends), d.Fleet.MaxConnectionsPerPod, slots)
	p.line("  each gateway admits %g new connections/s (burst %d)", d.Fleet.RatePerSecond, d.Fleet.Burst)
}

func (p *demoPrinter) dial(n int, gw string, r demoDial) {
	label := fmt.Sprintf("#%d", n)
	if n == 0 {
		label = "again"
	}
	switch {
	case r.conn != nil:
		p.line("  %-6s gateway %s  %d admitted   -> %-8s echo %q", label, gw, r.status, r.pod, r.echo)
	case r.status != 0 && r.reason != "":
		p.line("  %-6s gateway %s  %d rejected   reason %-11s Retry-After: %s", label, gw, r.status, r.reason, r.retryAfter)
	case r.status != 0:
		p.line("  %-6s gateway %s  %d failed     %v", label, gw, r.status, r.err)
	default:
		p.line("  %-6s gateway %s  failed       %v", label, gw, r.err)
	}
}

func (p *demoPrinter) scaler(ms []scalerMetric, pods int) {
	for _, m := range ms {
		var why string
		switch m.name {
		case scaler.MetricDesiredReplicas:
			why = fmt.Sprintf("pods the policy wants (the fleet has %d)", pods)
		case scaler.MetricConnections:
			why = fmt.Sprintf("live connections (HPA target %g per pod)", m.target)
		case scaler.MetricSaturation:
			why = fmt.Sprintf("live / (placeable pods x cap) (target %g)", m.target)
		}
		p.line("  %-16s %6.2f   %s", m.name, m.value, why)
	}
	for _, m := range ms {
		if m.name == scaler.MetricDesiredReplicas {
			p.line("  => recommendation: %d pods", int64(m.value))
		}
	}
}

func (p *demoPrinter) serving(d demoSystem, held, slots int) {
	p.line("")
	p.line("Serving until Ctrl-C. The demo holds %d connections; %d of %d slots are free.", held, slots-held, slots)
	for _, n := range d.Nodes {
		p.line("  connect      %s   (any WebSocket client; the pod echoes)", n.URL())
	}
	p.line("  inspect      wsgate metrics --redis-addr %s", d.Redis.Addr)
	p.line("  KEDA scaler  %s", d.Scaler.addr)
}
