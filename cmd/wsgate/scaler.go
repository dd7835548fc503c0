package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/fx"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/store"
)

func init() { commands["scaler"] = runScaler }

type scalerFlags struct {
	config, listen, telemetry, logLevel string
	tlsCert, tlsKey, tlsClientCA        string
	reapInterval, configCheck           time.Duration
	metricsInterval                     time.Duration
	checkConfig                         bool
	configData                          []byte
	redis                               *redisOptions
	kube                                kubeFlags
	cfg                                 scaler.Config
	// settings are the deprecated flags of the fleet-wide settings, file
	// the fleets file as loaded, and notes what a given one warns of.
	settings *settingFlags
	file     fleets.File
	notes    []settingNote
}

func runScaler(args []string) error {
	fs := flag.NewFlagSet("wsgate scaler", flag.ContinueOnError)
	f := scalerFlags{redis: redisFlags(fs)}
	fs.StringVar(&f.config, "config", "", "fleets file (YAML), the same as the trackers'; see fleets/fleets.example.yaml. Re-read every --config-check-interval and applied without a restart")
	fs.DurationVar(&f.configCheck, "config-check-interval", 5*time.Second, "how often the fleets file is re-read; a change is applied live, an invalid one refused")
	fs.StringVar(&f.listen, "listen", ":9000", "gRPC address of the external scaler (KEDA's scalerAddress) and its health service")
	fs.StringVar(&f.telemetry, "telemetry-listen", ":9102", "address of /metrics, /healthz and /readyz")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "server certificate (PEM); with --tls-key, serve TLS (KEDA trigger: enableTLS + caCert)")
	fs.StringVar(&f.tlsKey, "tls-key", "", "server certificate key (PEM)")
	fs.StringVar(&f.tlsClientCA, "tls-client-ca", "", "CA bundle for client certificates; when set, KEDA must present one (tlsClientCert/tlsClientKey)")
	fs.DurationVar(&f.cfg.Settle, "settle", 60*time.Second, "hold metrics until the Redis epoch is this old")
	fs.Float64Var(&f.cfg.ReadinessRatio, "readiness-ratio", 0.95, "hold metrics until this share of the expected tracker instances re-synced")
	fs.IntVar(&f.cfg.ExpectedInstances, "expected-instances", 0, "tracker instances to expect after Redis lost its data (0: the ready endpoints of the fleet's envoyService with --kube, else those alive before the epoch changed)")
	fs.DurationVar(&f.reapInterval, "reap-interval", 5*time.Second, "interval of reaping expired tracker instances")
	fs.DurationVar(&f.metricsInterval, "metrics-interval", 5*time.Second, "how often each fleet's state is read from Redis for /metrics (wsgate_scaler_ready, wsgate_scaler_fleet_*, wsgate_scaler_pod_connections), whether or not KEDA polls")
	f.settings = registerSettingFlags(fs, "The trackers' instance TTL: an instance is reaped only after standing still this long.",
		"The trackers' expired mode: reap, keep (never reap: the cap holds under partitions), or kube (reap only instances whose pod the fleet's envoyService no longer lists; needs --kube).")
	fs.BoolVar(&f.kube.enabled, "kube", false, "discover pods from the fleets' Service EndpointSlices and set pod-deletion-cost before scale-downs")
	fs.StringVar(&f.kube.namespace, "namespace", "", "namespace of the fleets' Services and pods (default: $POD_NAMESPACE)")
	fs.DurationVar(&f.kube.settle, "deletion-cost-settle", 15*time.Second, "how long pod-deletion-costs must have been observed before a scale-down goes ahead; the HPA's scale-down stabilization window counts toward it")
	fs.StringVar(&f.kube.kubeconfig, "kubeconfig", "", "kubeconfig file (default: the in-cluster service account)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&f.checkConfig, "check-config", false, "validate the flags and the fleets file, print \"config ok\" and exit, reaching nothing (Redis, Kubernetes): for CI and the chart's tests")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if f.kube.namespace == "" {
		f.kube.namespace = os.Getenv("POD_NAMESPACE")
	}
	if f.kube.enabled && f.kube.namespace == "" {
		return errors.New("--namespace: required with --kube (or set POD_NAMESPACE)")
	}
	loaded, err := loadFleetsFile(f.config, f.settings)
	if err != nil {
		return err
	}
	f.file, f.configData, f.notes = loaded.file, loaded.data, loaded.notes
	f.cfg.Fleets = loaded.file.Fleets
	f.cfg.InstanceTTL, f.cfg.ExpiredInstances = time.Duration(loaded.settings.InstanceTTL), loaded.settings.ExpiredInstances
	if f.cfg.ExpiredInstances == fleets.ExpiredKube && !f.kube.enabled {
		prefix, name, _ := f.settings.settingName("ExpiredInstances", f.config, f.file)
		return fmt.Errorf("%s%s kube: Kubernetes judges the instances only with --kube", prefix, name)
	}
	if f.configCheck <= 0 {
		return fmt.Errorf("--config-check-interval %s: must be positive", f.configCheck)
	}
	if f.reapInterval <= 0 {
		return fmt.Errorf("--reap-interval %s: must be positive", f.reapInterval)
	}
	if f.metricsInterval <= 0 {
		return fmt.Errorf("--metrics-interval %s: must be positive", f.metricsInterval)
	}
	if f.cfg.Settle <= 0 {
		return fmt.Errorf("--settle %s: must be positive", f.cfg.Settle)
	}
	if err := checkScalerConfig(f); err != nil {
		return err
	}
	if f.checkConfig {
		printNotes(f.notes)
		return configOK(f.logLevel, f.redis.config())
	}
	log, err := newLogger(f.logLevel)
	if err != nil {
		return err
	}
	for _, n := range f.notes {
		n.log(log)
	}
	return runApp(fx.New(fxLogger(log), scalerApp(f, log)))
}

// scalerConfigFlags names the flag of each scaler.Config field its Validate
// can refuse (the fleet-wide settings: settingField).
var scalerConfigFlags = map[string]string{
	"Settle":            "--settle",
	"ReadinessRatio":    "--readiness-ratio",
	"ExpectedInstances": "--expected-instances",
}

// checkScalerConfig validates before anything is built, so that an error
// names the flag (or the fleets file's field) that is wrong.
func checkScalerConfig(f scalerFlags) error {
	err := f.cfg.WithDefaults().Validate()
	var fe *scaler.FieldError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &fe) || fe.Field == "Fleets":
		return fmt.Errorf("--config %s: %w", f.config, err)
	}
	if flag, ok := scalerConfigFlags[fe.Field]; ok {
		return errors.New(fe.Describe(func(string) string { return flag }))
	}
	if _, ok := settingField[fe.Field]; ok {
		prefix, name, valueNote := f.settings.settingName(fe.Field, f.config, f.file)
		e := *fe
		e.Value += valueNote
		return errors.New(prefix + e.Describe(func(string) string { return name }))
	}
	return err
}

// scalerApp is the scaler's component graph.
func scalerApp(f scalerFlags, log *slog.Logger) fx.Option {
	kube := fx.Options()
	if f.kube.enabled {
		kube = kubeModule()
	}
	return fx.Options(
		fx.Supply(f, log),
		fx.Provide(newRegistry, newScalerRedis, newScalerStore, newScaler),
		kube,
		fx.Invoke(runReaper, runObserver, serveScaler, serveScalerTelemetry, watchScalerConfig),
	)
}

func newScalerRedis(lc fx.Lifecycle, f scalerFlags) (redis.UniversalClient, error) {
	return openRedis(lc, f.redis.config())
}

func newScalerStore(rdb redis.UniversalClient, f scalerFlags) *store.Store {
	return store.NewStore(rdb, f.redis.cfg.Prefix)
}

type scalerDeps struct {
	fx.In
	Flags    scalerFlags
	Store    *store.Store
	Registry prometheus.Registerer
	Log      *slog.Logger
	// Gate is the deletion-cost hook and Instances the Envoy Service's
	// ready endpoints, both present with --kube.
	Gate      scaler.ScaleDownGate   `optional:"true"`
	Instances scaler.InstanceCounter `optional:"true"`
	Judge     scaler.InstanceJudge   `optional:"true"`
}

func newScaler(d scalerDeps) (*scaler.Server, error) {
	opts := []scaler.Option{scaler.WithLogger(d.Log), scaler.WithMetrics(scaler.NewMetrics(d.Registry))}
	if d.Gate != nil {
		opts = append(opts, scaler.WithGate(d.Gate))
	}
	if d.Instances != nil {
		opts = append(opts, scaler.WithInstanceCounter(d.Instances))
	}
	if d.Judge != nil {
		opts = append(opts, scaler.WithInstanceJudge(d.Judge))
	}
	return scaler.New(d.Flags.cfg, d.Store, opts...)
}

type scalerConfigDeps struct {
	fx.In
	Lifecycle fx.Lifecycle
	Flags     scalerFlags
	Scaler    *scaler.Server
	Registry  prometheus.Registerer
	Log       *slog.Logger
	Discovery *discovery.Discovery `optional:"true"`
}

// watchScalerConfig applies every valid change of the fleets file to the
// scaler and, with --kube, to pod discovery.
func watchScalerConfig(d scalerConfigDeps) {
	m := fleets.NewReloadMetrics(d.Registry, "scaler")
	running := fleets.Settings{InstanceTTL: fleets.Duration(d.Flags.cfg.InstanceTTL), ExpiredInstances: d.Flags.cfg.ExpiredInstances}
	apply := func(file fleets.File) error {
		notes, err := d.Flags.settings.reloadSettings(d.Flags.config, file, running)
		if err != nil {
			return err
		}
		for _, n := range notes {
			n.log(d.Log)
		}
		// Both accept it, or neither changes.
		if d.Discovery != nil {
			if err := discovery.Check(file.Fleets); err != nil {
				return err
			}
		}
		if err := d.Scaler.Apply(file.Fleets); err != nil {
			return err
		}
		if d.Discovery != nil {
			if err := d.Discovery.SetFleets(file.Fleets); err != nil {
				return err
			}
		}
		d.Log.Info("fleets file applied", "config", d.Flags.config, "fleets", d.Scaler.Fleets())
		return nil
	}
	background(d.Lifecycle, func(ctx context.Context) {
		fleets.WatchFile(ctx, d.Flags.config, d.Flags.configData, d.Flags.configCheck, apply, m, d.Log)
	})
}

func runReaper(lc fx.Lifecycle, f scalerFlags, s *scaler.Server) {
	background(lc, func(ctx context.Context) { s.RunReaper(ctx, f.reapInterval) })
}

func runObserver(lc fx.Lifecycle, f scalerFlags, s *scaler.Server) {
	background(lc, func(ctx context.Context) { s.RunObserver(ctx, f.metricsInterval) })
}

// serveScaler binds --listen at start and stops gracefully: health goes
// NOT_SERVING, streams end, unary calls finish.
func serveScaler(lc fx.Lifecycle, f scalerFlags, s *scaler.Server, log *slog.Logger) error {
	tlsConfig, err := scaler.LoadTLS(f.tlsCert, f.tlsKey, f.tlsClientCA)
	if err != nil {
		return err
	}
	g := scaler.NewGRPC(s, tlsConfig)
	served := make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			ln, err := net.Listen("tcp", f.listen)
			if err != nil {
				return fmt.Errorf("scaler listener: %w", err)
			}
			log.Info("listening", "server", "scaler", "addr", ln.Addr().String(), "tls", tlsConfig != nil, "mtls", f.tlsClientCA != "")
			go func() {
				defer close(served)
				if err := g.Serve(ln); err != nil {
					log.Error("server stopped", "server", "scaler", "err", err)
				}
			}()
			return nil
		},
		OnStop: func(ctx context.Context) error { g.Stop(ctx); <-served; return nil },
	})
	return nil
}

// syncer is pod discovery's first-list flag (present with --kube).
type syncer interface{ Synced() bool }

type telemetryDeps struct {
	fx.In
	Lifecycle fx.Lifecycle
	Flags     scalerFlags
	Redis     redis.UniversalClient
	Gatherer  prometheus.Gatherer
	Log       *slog.Logger
	Discovery syncer `optional:"true"`
}

// serveScalerTelemetry serves /metrics, /healthz and /readyz: ready when
// Redis answers and, with --kube, discovery has listed the EndpointSlices
// once (until then the pod registry may be missing).
func serveScalerTelemetry(d telemetryDeps) {
	serveHTTP(d.Lifecycle, "telemetry", d.Flags.telemetry, scalerTelemetry(d.Redis, d.Gatherer, d.Discovery), d.Log)
}

func scalerTelemetry(rdb redis.UniversalClient, g prometheus.Gatherer, disc syncer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if disc != nil && !disc.Synced() {
			http.Error(w, "pod discovery has not listed the EndpointSlices yet", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if err := rdb.Ping(ctx).Err(); err != nil {
			http.Error(w, "redis: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
