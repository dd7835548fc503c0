package fleets

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ReloadMetrics are the fleets file's reload collectors, named as
// Prometheus names its own (prometheus_config_last_reload_successful).
type ReloadMetrics struct {
	Reloads        *prometheus.CounterVec // result: applied, invalid, unreadable
	LastSuccessful prometheus.Gauge
	LastSuccess    prometheus.Gauge
}

// NewReloadMetrics creates the collectors of component ("tracker",
// "scaler") and registers them with reg (nil: unregistered).
func NewReloadMetrics(reg prometheus.Registerer, component string) *ReloadMetrics {
	m := &ReloadMetrics{
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "wsgate", Subsystem: component, Name: "config_reloads_total",
			Help: "Changes of the fleets file seen, by result: applied, invalid (refused, the running configuration stays) or unreadable."}, []string{"result"}),
		LastSuccessful: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "wsgate", Subsystem: component, Name: "config_last_reload_successful",
			Help: "1 if the fleets file on disk is the configuration in use, 0 if its last change was refused."}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "wsgate", Subsystem: component, Name: "config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in use was loaded (Unix time)."}),
	}
	for _, r := range []string{"applied", "invalid", "unreadable"} {
		m.Reloads.WithLabelValues(r) // at 0 from the first scrape
	}
	m.LastSuccessful.Set(1)
	m.LastSuccess.SetToCurrentTime()
	if reg != nil {
		reg.MustRegister(m.Reloads, m.LastSuccessful, m.LastSuccess)
	}
	return m
}

// Watch is WatchFile for a caller that takes the fleets only: apply gets
// each new content's fleets, its settings checked but dropped.
func Watch(ctx context.Context, path string, loaded []byte, interval time.Duration, apply func([]Fleet) error, m *ReloadMetrics, log *slog.Logger) {
	WatchFile(ctx, path, loaded, interval, func(f File) error { return apply(f.Fleets) }, m, log)
}

// WatchFile re-reads the fleets file at path every interval until ctx
// ends and calls apply with each new content that parses and validates.
// It reads the file rather than waiting for file-system events: Kubernetes
// updates a mounted ConfigMap by swapping a symlink (..data) in its
// directory, editors replace files by renaming, and a read of a small file
// every few seconds sees all of these alike. A file mounted with subPath is
// never updated by the kubelet: mount the ConfigMap's directory.
//
// loaded is the content the running configuration came from. An invalid or
// unreadable file is logged, naming what is wrong, and counted; the running
// configuration stays, and the same content is not reported again. So
// does a content apply refuses (a setting that takes a restart). An
// empty path or an interval of 0 watches nothing.
func WatchFile(ctx context.Context, path string, loaded []byte, interval time.Duration, apply func(File) error, m *ReloadMetrics, log *slog.Logger) {
	if path == "" || interval <= 0 {
		return
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	seen, readErr := loaded, ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			if err.Error() != readErr { // once per distinct failure
				readErr = err.Error()
				m.Reloads.WithLabelValues("unreadable").Inc()
				log.Warn("fleets file unreadable; the running configuration stays", "config", path, "err", err)
			}
			continue
		}
		readErr = ""
		if bytes.Equal(data, seen) {
			continue
		}
		seen = data
		if err := applyFleets(path, data, apply); err != nil {
			m.Reloads.WithLabelValues("invalid").Inc()
			m.LastSuccessful.Set(0)
			log.Error("fleets file changed but is invalid; the running configuration stays", "config", path, "err", err)
			continue
		}
		m.Reloads.WithLabelValues("applied").Inc()
		m.LastSuccessful.Set(1)
		m.LastSuccess.SetToCurrentTime()
	}
}

// applyFleets parses the file at path and applies it; apply's errors say
// "apply" themselves.
func applyFleets(path string, data []byte, apply func(File) error) error {
	f, err := Decode(path, data)
	if err != nil {
		return err
	}
	return apply(f)
}
