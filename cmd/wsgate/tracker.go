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
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/fx"
	"google.golang.org/grpc"

	"github.com/wsgate/wsgate/envoy/admin"
	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/tracker"
	"github.com/wsgate/wsgate/tracker/accesslog"
)

func init() { commands["tracker"] = runTracker }

type trackerFlags struct {
	config, listen, telemetry, logLevel string
	configData                          []byte
	configCheck, shutdownTimeout        time.Duration
	shutdownListen, envoyAdmin          string
	accessLog                           string
	embedded, metricsPerPod             bool
	checkConfig                         bool
	runCheck                            string
	redis                               *redisOptions
	cfg                                 tracker.Config
	// settings are the deprecated flags of the fleet-wide settings, file
	// the fleets file as loaded, and notes what a given one warns of.
	settings *settingFlags
	file     fleets.File
	notes    []settingNote
}

func runTracker(args []string) error {
	fs := flag.NewFlagSet("wsgate tracker", flag.ContinueOnError)
	f := trackerFlags{redis: redisFlags(fs)}
	fs.StringVar(&f.config, "config", "", "fleets file (YAML); see fleets/fleets.example.yaml. Re-read every --config-check-interval and applied without a restart")
	fs.DurationVar(&f.configCheck, "config-check-interval", 5*time.Second, "how often the fleets file is re-read; a change is applied live, an invalid one refused")
	fs.StringVar(&f.cfg.InstanceID, "instance-id", "", "this instance's id in Redis, unique per Envoy pod (default: the host name)")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:9090", "admission API address (loopback only)")
	fs.StringVar(&f.accessLog, "access-log-listen", "127.0.0.1:9091", "address of the gRPC access-log receiver Envoy streams to (loopback only)")
	fs.StringVar(&f.telemetry, "telemetry-listen", ":9102", "address of /metrics, /healthz, /readyz and /status for Prometheus, probes and operators (empty: serve them on --listen)")
	fs.DurationVar(&f.cfg.Heartbeat, "heartbeat", tracker.DefaultHeartbeat, "interval of the heartbeat that re-publishes this instance's counts")
	fs.DurationVar(&f.cfg.EstablishTimeout, "establish-timeout", 30*time.Second, "release an admitted connection Envoy never reported established")
	fs.DurationVar(&f.cfg.LeaseTTL, "lease-ttl", 90*time.Second, "release an established connection whose lease Envoy stopped renewing")
	fs.DurationVar(&f.cfg.ReleaseLinger, "release-linger", tracker.DefaultReleaseLinger, "how long a connection's release waits for an admit call to carry it, or for a new connection of this Envoy to take its slot back, before it goes to Redis alone: longer costs Redis fewer calls, and keeps the freed slot from other Envoys that much longer; shorter than --heartbeat")
	fs.DurationVar(&f.cfg.RedisTimeout, "redis-timeout", 100*time.Millisecond, "bound of one admission's Redis work, after which the fallback decides (keep below the Lua filter's 250ms httpCall timeout)")
	fallback := fs.String("fallback", "share", "admission Redis cannot decide: share (only into slots Redis counts for this instance: never above the cap), closed, or open (may exceed the cap)")
	f.settings = registerSettingFlags(fs, "How long this instance's counts outlive its last heartbeat.",
		"An instance whose lease ran out: reap (its slots go to others; a cut-off instance's pods may exceed the cap), keep (counted until it comes back: the cap holds), or kube (the scaler reaps it once Kubernetes no longer lists its pod: the cap holds); the same for every tracker and the scaler.")
	fs.IntVar(&f.cfg.WaitReplicas, "redis-wait-replicas", 0, "admissions count only once this many replicas acknowledged them (Redis WAIT on the admit call's connection); one not acknowledged in --redis-wait-timeout is refused to the fallback. Set it to the number of replicas of the primary (Sentinel, Cluster) to keep the cap under split brain; 0: off, for a Redis without replicas")
	fs.DurationVar(&f.cfg.WaitTimeout, "redis-wait-timeout", 50*time.Millisecond, "how long an admission waits for --redis-wait-replicas acknowledgements; at least 1ms and below --redis-timeout")
	fs.StringVar(&f.cfg.ReplicationCheck, "redis-replication-check", "warn", "when the Redis of a fleet cannot keep the cap under split brain (replicas, or Sentinel or Cluster, with --redis-wait-replicas below their number, or expiredInstances reap beside replicas), checked at start and at each new epoch: warn (log it) or refuse (do not start; at a later epoch log an error and go on); wsgate_tracker_redis_replication_safe says it either way")
	fs.StringVar(&f.runCheck, "redis-run-check", "cached", "how admissions and releases learn Redis' run_id, which catches a restart with old data: cached (in their script text, loaded into the one Redis process it names; Redis 7.0 and later, else per-call) or per-call (INFO in every script: for a proxy that keeps client connections while the Redis behind it restarts)")
	fs.BoolVar(&f.embedded, "redis-embedded", false, "run an in-process Redis (miniredis) instead of --redis-addr: for trying wsgate out, never for production")
	fs.StringVar(&f.shutdownListen, "shutdown-listen", "", "loopback address of GET /shutdown, for the Envoy container's preStop hook: drain, then answer once Envoy's connections have ended (empty: off)")
	fs.StringVar(&f.envoyAdmin, "envoy-admin", "", "Envoy's admin address (127.0.0.1:9901): /shutdown fails its health check and drains its listeners, and on SIGTERM an Envoy that is gone lets this instance leave Redis at once (empty: wait for the connections to end)")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM (and in /shutdown), how long to keep this instance's connections counted while they end; keep it below the pod's terminationGracePeriodSeconds")
	fs.BoolVar(&f.metricsPerPod, "metrics-per-pod", false, "label wsgate_tracker_connections by backend pod (series grow as Envoy pods x backend pods; the scaler's wsgate_scaler_pod_connections has them once per fleet); default: one series per fleet")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&f.checkConfig, "check-config", false, "validate the flags and the fleets file, print \"config ok\" and exit, reaching nothing (Redis, Envoy): for CI and the chart's tests")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if f.cfg.InstanceID == "" {
		f.cfg.InstanceID, _ = os.Hostname()
	}
	f.cfg.Fallback = tracker.FallbackMode(*fallback)
	if f.runCheck != "cached" && f.runCheck != "per-call" {
		return fmt.Errorf("--redis-run-check %q: want cached or per-call", f.runCheck)
	}
	loaded, err := loadFleetsFile(f.config, f.settings)
	if err != nil {
		return err
	}
	f.file, f.configData, f.notes = loaded.file, loaded.data, loaded.notes
	f.cfg.Fleets = loaded.file.Fleets
	f.cfg.InstanceTTL, f.cfg.ExpiredInstances = time.Duration(loaded.settings.InstanceTTL), loaded.settings.ExpiredInstances
	if f.embedded && f.cfg.WaitReplicas > 0 {
		return fmt.Errorf("--redis-wait-replicas %d: the embedded Redis (--redis-embedded) has no replicas to wait for: leave it at 0", f.cfg.WaitReplicas)
	}
	if f.configCheck <= 0 {
		return fmt.Errorf("--config-check-interval %s: must be positive", f.configCheck)
	}
	if err := checkTrackerConfig(fs, f); err != nil {
		return err
	}
	if err := requireLoopback("listen", f.listen); err != nil {
		return err
	}
	if err := requireLoopback("access-log-listen", f.accessLog); err != nil {
		return err
	}
	if f.shutdownListen != "" {
		// /shutdown drains this instance and Envoy for good: whoever
		// reaches it takes the pod out of service, with no undo.
		if err := requireLoopback("shutdown-listen", f.shutdownListen); err != nil {
			return err
		}
	}
	if f.checkConfig {
		printNotes(f.notes)
		if f.embedded {
			return configOK(f.logLevel, store.RedisConfig{Addrs: []string{"127.0.0.1:0"}})
		}
		return configOK(f.logLevel, f.redis.config())
	}
	log, err := newLogger(f.logLevel)
	if err != nil {
		return err
	}
	for _, n := range f.notes {
		n.log(log)
	}
	var t *tracker.Tracker
	app := fx.New(
		fxLogger(log),
		fx.Supply(f, log),
		fx.Provide(newRegistry, newRedis, newStore, newTracker),
		fx.Invoke(checkReplication, runHeartbeat, serveAdmission, serveAccessLog, watchTrackerConfig, serveShutdown),
		fx.Populate(&t),
	)
	return runAppDraining(app, func() { shutdownTracker(t, f, log) })
}

func (f trackerFlags) envoy() *admin.Client {
	if f.envoyAdmin == "" {
		return nil
	}
	return admin.New(f.envoyAdmin)
}

func (f trackerFlags) envoyGone() func() bool {
	if a := f.envoy(); a != nil {
		return a.Gone
	}
	return nil
}

// shutdownTracker runs on SIGTERM, before any server stops: the instance
// admits nothing more and keeps its connections counted until they have
// ended, or its Envoy is gone (a native sidecar stops after Envoy), then
// leaves Redis at once. Past --shutdown-timeout it exits without leaving:
// what Envoy may still carry stays counted until the instance is reaped.
func shutdownTracker(t *tracker.Tracker, f trackerFlags, log *slog.Logger) {
	if t == nil {
		return
	}
	t.Drain()
	ctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
	defer cancel()
	if !t.AwaitDrained(ctx, f.envoyGone()) {
		log.Warn("shutdown timeout: connections remain; they stay counted in Redis until this instance is reaped", "connections", t.Live(), "timeout", f.shutdownTimeout)
		return
	}
	lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer lcancel()
	if err := t.Leave(lctx); err != nil {
		log.Warn("leaving Redis failed: this instance is reaped after its lease instead", "err", err)
	}
}

// serveShutdown serves GET /shutdown for the Envoy container's preStop
// hook (Kubernetes runs it before it sends Envoy SIGTERM): the instance
// drains, Envoy fails its health check and drains its listeners, and the
// answer comes once Envoy's last connection ended, or --shutdown-timeout.
// It listens on loopback only (runTracker refuses any other address): the
// hook runs in the Envoy container, which shares the pod's loopback, so
// nothing off the pod can take it out of service. An httpGet hook would
// need the pod IP, where any client of the network could call it too.
func serveShutdown(lc fx.Lifecycle, f trackerFlags, t *tracker.Tracker, log *slog.Logger) {
	if f.shutdownListen == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /shutdown", func(w http.ResponseWriter, r *http.Request) {
		t.Drain()
		if a := f.envoy(); a != nil {
			for _, call := range []func(context.Context) error{a.FailHealthcheck, a.DrainListeners} {
				if err := call(r.Context()); err != nil {
					log.Warn("draining envoy failed", "err", err)
				}
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), f.shutdownTimeout)
		defer cancel()
		if t.AwaitDrained(ctx, nil) {
			_, _ = io.WriteString(w, "drained\n")
			return
		}
		// 200 all the same: Kubernetes goes on with the termination.
		fmt.Fprintf(w, "timeout: %d connections remain\n", t.Live())
	})
	serveHTTP(lc, "shutdown", f.shutdownListen, mux, log)
}

// trackerConfigFlags names the flag of each tracker.Config field its
// Validate can refuse (the fleet-wide settings: settingField).
var trackerConfigFlags = map[string]string{
	"InstanceID":       "--instance-id",
	"Heartbeat":        "--heartbeat",
	"EstablishTimeout": "--establish-timeout",
	"LeaseTTL":         "--lease-ttl",
	"RedisTimeout":     "--redis-timeout",
	"Fallback":         "--fallback",
	"WaitReplicas":     "--redis-wait-replicas",
	"WaitTimeout":      "--redis-wait-timeout",
	"ReplicationCheck": "--redis-replication-check",
	"ReleaseLinger":    "--release-linger",
}

// checkTrackerConfig validates before anything is built, so that an error
// names the flag (or the fleets file's field) that is wrong: an explicit
// zero duration is an error, never the default in disguise.
func checkTrackerConfig(fs *flag.FlagSet, f trackerFlags) error {
	var err error
	fs.Visit(func(fl *flag.Flag) {
		if isSettingFlag(fl.Name) {
			return // resolve refused a zero, with the file's default
		}
		if d, ok := fl.Value.(flag.Getter).Get().(time.Duration); ok && d == 0 && err == nil {
			err = fmt.Errorf("--%s 0: must be positive (leave it out for the default %s)", fl.Name, fl.DefValue)
		}
	})
	if err != nil {
		return err
	}
	err = f.cfg.WithDefaults().Validate()
	var fe *tracker.FieldError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &fe) || fe.Field == "Fleets":
		return fmt.Errorf("--config %s: %w", f.config, err)
	}
	name := func(field string) string {
		if flag, ok := trackerConfigFlags[field]; ok {
			return flag
		}
		_, n, _ := f.settings.settingName(field, f.config, f.file)
		return n
	}
	// A setting from the fleets file is shown after its file and line.
	prefix, e := "", *fe
	if _, ok := settingField[e.Field]; ok {
		var valueNote string
		prefix, _, valueNote = f.settings.settingName(e.Field, f.config, f.file)
		e.Value += valueNote
	}
	return errors.New(prefix + e.Describe(name))
}

func newRedis(lc fx.Lifecycle, f trackerFlags, log *slog.Logger) (redis.UniversalClient, error) {
	cfg := f.redis.config()
	if f.embedded {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("embedded redis: %w", err)
		}
		log.Warn("using an embedded in-process Redis: state is lost on exit and not shared with other hosts", "addr", mr.Addr())
		cfg = store.RedisConfig{Addrs: []string{mr.Addr()}, Prefix: cfg.Prefix}
		lc.Append(fx.StopHook(mr.Close))
	}
	return openRedis(lc, cfg)
}

func newStore(rdb redis.UniversalClient, f trackerFlags) *store.Store {
	s := store.NewStore(rdb, f.redis.cfg.Prefix).WithTopology(f.redis.config().Topology())
	if f.embedded {
		s = s.WithoutRestartDetection() // miniredis reports no run_id
	} else if f.runCheck == "per-call" {
		s = s.WithRunCheckPerCall()
	}
	return s
}

func newTracker(f trackerFlags, store *store.Store, reg prometheus.Registerer, log *slog.Logger) (*tracker.Tracker, error) {
	t, err := tracker.New(f.cfg, store, tracker.WithLogger(log), tracker.WithMetrics(tracker.NewMetrics(reg)))
	if err != nil {
		return nil, err
	}
	if err := reg.Register(tracker.NewCollector(t, f.metricsPerPod)); err != nil {
		return nil, fmt.Errorf("register connections collector: %w", err)
	}
	return t, nil
}

// serveAccessLog runs the gRPC access-log receiver Envoy streams entries to
// (envoy.yaml's wsgate_accesslog cluster), stopped gracefully with the app.
func serveAccessLog(lc fx.Lifecycle, f trackerFlags, t *tracker.Tracker, log *slog.Logger) {
	srv := grpc.NewServer()
	accesslog.New(t, t.Metrics().AccessLogEntries, log.With("component", "accesslog")).Register(srv)
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			ln, err := net.Listen("tcp", f.accessLog)
			if err != nil {
				return fmt.Errorf("access-log listener: %w", err)
			}
			log.Info("listening", "server", "accesslog", "addr", ln.Addr().String())
			go func() {
				if err := srv.Serve(ln); err != nil {
					log.Error("server stopped", "server", "accesslog", "err", err)
				}
			}()
			return nil
		},
		OnStop: func(ctx context.Context) error {
			// Envoy holds its access-log stream open for good, and after
			// the drain nothing it could still send matters: give what is
			// in flight a second, then cut it rather than hang the shutdown.
			done := make(chan struct{})
			go func() { srv.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				srv.Stop()
			case <-time.After(time.Second):
				srv.Stop()
			}
			return nil
		},
	})
}

func runHeartbeat(lc fx.Lifecycle, t *tracker.Tracker) { background(lc, t.Run) }

// checkReplication checks, before the first heartbeat, whether the Redis
// of each fleet keeps the cap under split brain (with
// --redis-replication-check=refuse a Redis that cannot fails the start),
// then again at each new epoch. Not for the embedded miniredis, which has
// no replication to check.
func checkReplication(lc fx.Lifecycle, f trackerFlags, t *tracker.Tracker) {
	if f.embedded {
		return
	}
	lc.Append(fx.StartHook(t.CheckReplication))
	background(lc, t.WatchReplication)
}

// watchTrackerConfig applies every valid change of the fleets file; one
// that changes a fleet-wide setting is refused (reloadSettings).
func watchTrackerConfig(lc fx.Lifecycle, f trackerFlags, t *tracker.Tracker, reg prometheus.Registerer, log *slog.Logger) {
	m := fleets.NewReloadMetrics(reg, "tracker")
	running := fleets.Settings{InstanceTTL: fleets.Duration(f.cfg.InstanceTTL), ExpiredInstances: f.cfg.ExpiredInstances}
	apply := func(file fleets.File) error {
		notes, err := f.settings.reloadSettings(f.config, file, running)
		if err != nil {
			return err
		}
		for _, n := range notes {
			n.log(log)
		}
		ch, err := t.Apply(file.Fleets)
		if err == nil {
			log.Info("fleets file applied", "config", f.config, "added", ch.Added, "changed", ch.Changed, "removed", ch.Removed)
		}
		return err
	}
	background(lc, func(ctx context.Context) {
		fleets.WatchFile(ctx, f.config, f.configData, f.configCheck, apply, m, log)
	})
}

func serveAdmission(lc fx.Lifecycle, f trackerFlags, t *tracker.Tracker, g prometheus.Gatherer, log *slog.Logger) {
	admission := t.Handler(nil)
	if f.telemetry == "" {
		admission = t.Handler(g)
	} else {
		serveHTTP(lc, "telemetry", f.telemetry, t.TelemetryHandler(g), log)
	}
	serveHTTP(lc, "admission", f.listen, admission, log)
}
