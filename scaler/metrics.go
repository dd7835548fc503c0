package scaler

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
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
	if reg != nil {
		reg.MustRegister(m.RPCSeconds, m.Reported, m.Ready, m.Reaped, m.TLSHandshakeFailures)
	}
	return m
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
