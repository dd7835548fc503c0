package scaler

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// Metrics are the scaler's Prometheus collectors.
type Metrics struct {
	// RPCSeconds is the latency of each gRPC method, by status code.
	RPCSeconds *prometheus.HistogramVec
	// Reported is the last value reported per fleet and metric.
	Reported *prometheus.GaugeVec
	// Ready is 1 while a fleet's counts are complete, 0 while held.
	Ready *prometheus.GaugeVec
	// Reaped counts expired tracker instances the scaler reaped.
	Reaped *prometheus.CounterVec
	// TLSHandshakeFailures counts connections refused in the TLS handshake.
	TLSHandshakeFailures prometheus.Counter

	// The fleet's state as Redis holds it, all tracker instances together,
	// read every Config.ObserveInterval (Observe) whether or not KEDA polls.
	Connections    *prometheus.GaugeVec // fleet
	Cap            *prometheus.GaugeVec // fleet
	Pods           *prometheus.GaugeVec // fleet, state
	Saturation     *prometheus.GaugeVec // fleet
	Instances      *prometheus.GaugeVec // fleet, state
	Rejections     *prometheus.GaugeVec // fleet, reason
	PodConnections *prometheus.GaugeVec // fleet, pod
	ReadErrors     *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		RPCSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wsgate_scaler_rpc_duration_seconds",
			Help:    "Latency of the external scaler's gRPC methods (streams: their lifetime).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"method", "code"}),
		Reported: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_scaler_reported_value",
			Help: "Last metric value reported to KEDA, per fleet and metric.",
		}, []string{"fleet", "metric"}),
		Ready: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_scaler_ready",
			Help: "1 when the fleet's counts are complete, 0 while metrics are held (readiness).",
		}, []string{"fleet"}),
		Reaped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_scaler_reaped_instances_total",
			Help: "Expired tracker instances whose connections the scaler removed.",
		}, []string{"fleet"}),
		TLSHandshakeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wsgate_scaler_tls_handshake_failures_total",
			Help: "Connections to the scaler's gRPC listener that failed the TLS handshake (each is also logged).",
		}),
	}
	fleetGauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, append([]string{"fleet"}, labels...))
	}
	m.Connections = fleetGauge("wsgate_scaler_fleet_connections", "Live connections of the fleet, all tracker instances together, as Redis counts them.")
	m.Cap = fleetGauge("wsgate_scaler_fleet_cap", "The fleet's maxConnectionsPerPod (fleets file).")
	m.Pods = fleetGauge("wsgate_scaler_fleet_pods", "Pods of the fleet's registry in Redis, by state: registered (starting ones included), ready, placeable (ready, not draining), draining.", "state")
	m.Saturation = fleetGauge("wsgate_scaler_fleet_saturation", "Live connections / (placeable pods x cap); with no placeable pod 1 if connections exist or were refused, else 0 (the saturation metric).")
	m.Instances = fleetGauge("wsgate_scaler_fleet_instances", "Tracker instances of the fleet by state: alive (lease unexpired by Redis' clock), synced (re-published in the current epoch).", "state")
	m.Rejections = fleetGauge("wsgate_scaler_fleet_rejections_5m", "Rejected admissions of the fleet in the last 5 min, all tracker instances together (Redis' rejection windows), by reason.", "reason")
	m.PodConnections = fleetGauge("wsgate_scaler_pod_connections", "Live connections per backend pod, all tracker instances together, as Redis counts them: one series per pod of the fleet's registry.", "pod")
	m.ReadErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsgate_scaler_fleet_read_errors_total",
		Help: "Failed reads of a fleet's state from Redis by the scaler's own evaluation (Observe).",
	}, []string{"fleet"})
	if reg != nil {
		reg.MustRegister(m.RPCSeconds, m.Reported, m.Ready, m.Reaped, m.TLSHandshakeFailures,
			m.Connections, m.Cap, m.Pods, m.Saturation, m.Instances, m.Rejections, m.PodConnections, m.ReadErrors)
	}
	return m
}

// podStates and instanceStates are the values of the state labels.
var (
	podStates      = []string{"registered", "ready", "placeable", "draining"}
	instanceStates = []string{"alive", "synced"}
)

// addFleet creates fleet's series, at 0 until the first evaluation (ready:
// held until then), so that rules and dashboards see every fleet from
// the first scrape.
func (m *Metrics) addFleet(fc fleets.Fleet) {
	m.Ready.WithLabelValues(fc.Name).Set(0)
	m.Reaped.WithLabelValues(fc.Name)
	m.ReadErrors.WithLabelValues(fc.Name)
	m.Connections.WithLabelValues(fc.Name).Set(0)
	m.Cap.WithLabelValues(fc.Name).Set(float64(fc.MaxConnectionsPerPod))
	m.Saturation.WithLabelValues(fc.Name).Set(0)
	for _, st := range podStates {
		m.Pods.WithLabelValues(fc.Name, st).Set(0)
	}
	for _, st := range instanceStates {
		m.Instances.WithLabelValues(fc.Name, st).Set(0)
	}
	for _, r := range store.Reasons {
		m.Rejections.WithLabelValues(fc.Name, string(r)).Set(0)
	}
}

// removeFleet deletes the series of a fleet no longer configured.
func (m *Metrics) removeFleet(fleet string) {
	l := prometheus.Labels{"fleet": fleet}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.Reported, m.Ready, m.Reaped, m.ReadErrors, m.Connections, m.Cap, m.Pods, m.Saturation, m.Instances, m.Rejections, m.PodConnections,
	} {
		v.DeletePartialMatch(l)
	}
}

// observed sets fleet's gauges from sum (read whole, even while held: the
// gauges say what Redis holds, wsgate_scaler_ready whether it is complete).
func (m *Metrics) observed(fc fleets.Fleet, sum store.Summary) {
	f := fc.Name
	m.Connections.WithLabelValues(f).Set(float64(sum.Live))
	m.Cap.WithLabelValues(f).Set(float64(fc.MaxConnectionsPerPod))
	m.Saturation.WithLabelValues(f).Set(saturation(sum, fc.MaxConnectionsPerPod))
	for i, n := range []int64{sum.Pods, sum.Ready, sum.Placeable, sum.Draining} {
		m.Pods.WithLabelValues(f, podStates[i]).Set(float64(n))
	}
	m.Instances.WithLabelValues(f, "alive").Set(float64(sum.Alive))
	m.Instances.WithLabelValues(f, "synced").Set(float64(sum.Synced))
	for _, r := range store.Reasons {
		m.Rejections.WithLabelValues(f, string(r)).Set(float64(sum.Rejections[r].M5))
	}
}

func (m *Metrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := next(ctx, req)
	m.RPCSeconds.WithLabelValues(info.FullMethod, status.Code(err).String()).Observe(time.Since(start).Seconds())
	return resp, err
}

func (m *Metrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, next grpc.StreamHandler) error {
	start := time.Now()
	err := next(srv, ss)
	m.RPCSeconds.WithLabelValues(info.FullMethod, status.Code(err).String()).Observe(time.Since(start).Seconds())
	return err
}
