package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
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
	"sigs.k8s.io/yaml"

	"github.com/wsgate/wsgate/envoy/gateway"
	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/tracker"
	"github.com/wsgate/wsgate/tracker/accesslog"
)

// wsgate demo: the whole system on loopback, in one process, then a
// scripted walk through admissions, rejections, releases, the operators'
// views and the scaler's answer. The components are the production ones;
// only Envoy is replaced by envoy/gateway, which runs the real wsgate.lua.

func init() { commands["demo"] = runDemoCommand }

const (
	demoFleet = "demo"
	// demoPrefix is the embedded Redis' key prefix; on an external one
	// each run takes a prefix of its own (demoRedis.Prefix) and deletes
	// its keys on exit, so that it neither mixes with nor leaves behind
	// another deployment's {wsgate:demo} state.
	demoPrefix = "wsgate"
	// demoSettle replaces the scaler's 60 s settle time: a fresh demo Redis
	// has nothing a restart could have lost, and nobody waits a minute.
	demoSettle = time.Second
	// demoWait bounds every await of the scripted phase.
	demoWait = 10 * time.Second
	// demoInstanceTTL replaces the fleets file's 10 s instanceTTL (their
	// heartbeat is 1 s): it is also the recovery wait of a new epoch, which
	// the demo sits through before its first client (tracker/PROTOCOL.md).
	demoInstanceTTL = 3 * time.Second
)

// demoOptions are the demo's flags.
type demoOptions struct {
	redisAddr     string // empty: embedded miniredis
	redisPassword string
	backends      int
	cap           int
	rate          float64
	listenBase    string
	logLevel      string
	// redisTimeout is each tracker's --redis-timeout; the gateways' filter
	// waits demoAdmitSlack longer for its tracker, as the chart keeps the
	// filter's admission timeout above the tracker's.
	redisTimeout time.Duration
	// scriptOnly returns after the scripted phase instead of serving until
	// SIGINT/SIGTERM.
	scriptOnly bool
}

func runDemoCommand(args []string) error {
	fs := flag.NewFlagSet("wsgate demo", flag.ContinueOnError)
	var o demoOptions
	fs.StringVar(&o.redisAddr, "redis", "", "use the Redis at this address instead of an embedded in-process one: the demo's keys get a prefix of their own, deleted on exit")
	fs.StringVar(&o.redisPassword, "redis-password", "", "password of the --redis Redis (prefer WSGATE_REDIS_PASSWORD)")
	fs.IntVar(&o.backends, "backends", 3, "backend WebSocket servers (pods) to start")
	fs.IntVar(&o.cap, "cap", 2, "maxConnectionsPerPod: connections one pod may hold, all gateways together")
	fs.Float64Var(&o.rate, "rate", 5, "new connections per second each gateway admits")
	fs.StringVar(&o.listenBase, "listen-base", "127.0.0.1:0", "loopback address of the first listener; with a port P, the gateways get P and P+1, the trackers, scaler, Redis and backends the next ports (port 0: free ports)")
	fs.DurationVar(&o.redisTimeout, "redis-timeout", 100*time.Millisecond, "each tracker's --redis-timeout: raise it on a slow or busy machine, where Redis calls past it are refused as redis_down")
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
	if o.backends < 1 || o.cap < 1 || o.rate <= 0 || o.redisTimeout <= 0 {
		return fmt.Errorf("--backends %d, --cap %d, --rate %g, --redis-timeout %s: all must be positive", o.backends, o.cap, o.rate, o.redisTimeout)
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
		fx.Provide(newDemoListeners, newDemoRedis, newDemoStore, newDemoFleet, newDemoFleetsFile, newDemoBackends, newDemoNodes, newDemoScaler),
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
	Store    *store.Store
	Fleet    fleets.Fleet
	File     demoFleetsFile
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
	Password string
	Prefix   string
	Embedded bool
}

func newDemoRedis(lc fx.Lifecycle, o demoOptions, ls *demoListeners, log *slog.Logger) (demoRedis, error) {
	r := demoRedis{Addr: o.redisAddr, Password: o.redisPassword, Prefix: demoPrefix}
	if r.Addr == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr(ls.redisAddr); err != nil {
			return r, fmt.Errorf("embedded redis on %s: %w", ls.redisAddr, err)
		}
		lc.Append(fx.StopHook(mr.Close))
		r.Addr, r.Embedded = mr.Addr(), true
	} else {
		var b [4]byte
		_, _ = rand.Read(b[:])
		r.Prefix = "wsgate-demo-" + hex.EncodeToString(b[:])
	}
	rdb, err := openRedis(lc, store.RedisConfig{Addrs: []string{r.Addr}, Password: r.Password, Prefix: r.Prefix, DialTimeout: 2 * time.Second})
	if err != nil {
		return r, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return r, fmt.Errorf("reach Redis at %s: %w", r.Addr, err)
	}
	r.Client = rdb
	if !r.Embedded {
		// Stops after every component that writes (they start later),
		// before the client closes.
		lc.Append(fx.StopHook(func(ctx context.Context) { removeDemoKeys(ctx, r, log) }))
	}
	return r, nil
}

// removeDemoKeys deletes every key of the run's prefix.
func removeDemoKeys(ctx context.Context, r demoRedis, log *slog.Logger) {
	iter := r.Client.Scan(ctx, 0, "{"+r.Prefix+":*", 1000).Iterator()
	n := 0
	for iter.Next(ctx) {
		if err := r.Client.Del(ctx, iter.Val()).Err(); err != nil {
			log.Warn("demo keys not all removed", "redis", r.Addr, "prefix", r.Prefix, "err", err)
			return
		}
		n++
	}
	if err := iter.Err(); err != nil {
		log.Warn("demo keys not all removed", "redis", r.Addr, "prefix", r.Prefix, "err", err)
		return
	}
	log.Info("demo keys removed", "redis", r.Addr, "prefix", r.Prefix, "keys", n)
}

func newDemoStore(r demoRedis) *store.Store {
	s := store.NewStore(r.Client, r.Prefix)
	if r.Embedded {
		s = s.WithoutRestartDetection() // miniredis reports no run_id
	}
	return s
}

func newDemoFleet(o demoOptions, ls *demoListeners) fleets.Fleet {
	pods := make([]string, len(ls.backends))
	for i, l := range ls.backends {
		pods[i] = l.Addr().String()
	}
	return fleets.Fleet{
		Name: demoFleet, MaxConnectionsPerPod: o.cap, RatePerSecond: o.rate, Pods: pods,
	}.WithDefaults()
}

// demoFleetsFile is the demo fleet written as a fleets file, for the
// `wsgate metrics --config` the demo prints; removed on exit.
type demoFleetsFile string

func newDemoFleetsFile(lc fx.Lifecycle, fc fleets.Fleet) (demoFleetsFile, error) {
	dir, err := os.MkdirTemp("", "wsgate-demo-")
	if err != nil {
		return "", fmt.Errorf("demo fleets file: %w", err)
	}
	lc.Append(fx.StopHook(func() { os.RemoveAll(dir) }))
	doc, err := yaml.Marshal(map[string][]fleets.Fleet{"fleets": {fc}})
	if err != nil {
		return "", fmt.Errorf("demo fleets file: %w", err)
	}
	path := filepath.Join(dir, "fleets.yaml")
	if err := os.WriteFile(path, doc, 0o600); err != nil {
		return "", fmt.Errorf("demo fleets file: %w", err)
	}
	return demoFleetsFile(path), nil
}

// metricsCommand is the `wsgate metrics` command line that shows the
// demo's state, the binary as this one was started (bin/wsgate under make
// run), the password left to WSGATE_REDIS_PASSWORD; and its arguments,
// the password included, as the demo runs them itself.
func (d demoSystem) metricsCommand() (string, []string) {
	args := []string{"--redis-addr", d.Redis.Addr}
	if d.Redis.Prefix != demoPrefix {
		args = append(args, "--redis-prefix", d.Redis.Prefix)
	}
	args = append(args, "--config", string(d.File), "--settle", demoSettle.String())
	bin := "wsgate"
	if strings.Contains(os.Args[0], "/") && !strings.HasSuffix(os.Args[0], ".test") {
		bin = os.Args[0]
	}
	line := bin + " metrics " + strings.Join(args, " ")
	if d.Redis.Password != "" {
		line = "WSGATE_REDIS_PASSWORD=... " + line
		args = append(args, "--redis-password", d.Redis.Password)
	}
	return line, args
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

// demoAdmitTimeout is the filter's default admission timeout, and
// demoAdmitSlack what it keeps above the tracker's Redis timeout: the
// tracker must answer (even "redis_down") before the filter gives up.
const (
	demoAdmitTimeout = 250 * time.Millisecond
	demoAdmitSlack   = 150 * time.Millisecond
)

// demoNode is one Envoy pod: the gateway and its tracker sidecar.
type demoNode struct {
	name                    string
	tracker                 *tracker.Tracker
	admitURL, accessLogAddr string
	gatewayLn               net.Listener
}

// URL is the node's WebSocket entry point.
func (n *demoNode) URL() string { return "ws://" + n.gatewayLn.Addr().String() + "/" }

func newDemoNodes(lc fx.Lifecycle, o demoOptions, ls *demoListeners, store *store.Store, fleet fleets.Fleet, log *slog.Logger) ([]*demoNode, error) {
	var nodes []*demoNode
	for i, name := range []string{"a", "b"} {
		cfg := tracker.Config{InstanceID: "demo-envoy-" + name, Fleets: []fleets.Fleet{fleet}, Heartbeat: time.Second, InstanceTTL: demoInstanceTTL, RedisTimeout: o.redisTimeout}
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
func serveDemoGateways(lc fx.Lifecycle, o demoOptions, nodes []*demoNode, log *slog.Logger) error {
	for _, n := range nodes {
		gw, err := gateway.New(gateway.Config{
			TrackerURL: n.admitURL, AccessLogAddr: n.accessLogAddr, Fleet: demoFleet,
			AdmitTimeout: max(demoAdmitTimeout, o.redisTimeout+demoAdmitSlack),
			NodeID:       "demo-envoy-" + n.name, Logger: log.With("component", "gateway", "node", n.name),
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

func newDemoScaler(lc fx.Lifecycle, ls *demoListeners, store *store.Store, fleet fleets.Fleet, log *slog.Logger) (*demoScaler, error) {
	s, err := scaler.New(scaler.Config{Fleets: []fleets.Fleet{fleet}, Settle: demoSettle, InstanceTTL: demoInstanceTTL}, store, scaler.WithLogger(log.With("component", "scaler")))
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
