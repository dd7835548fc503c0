package discovery

import "github.com/prometheus/client_golang/prometheus"

// Metrics are discovery's Prometheus collectors.
type Metrics struct {
	Publishes *prometheus.CounterVec
	Endpoints *prometheus.GaugeVec
}

// NewMetrics creates discovery's collectors and registers them on reg
// (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_scaler_discovery_publishes_total",
			Help: "Writes of a fleet's pod registry to Redis by result (ok, error).",
		}, []string{"fleet", "result"}),
		Endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_scaler_discovery_pods",
			Help: "Pods of a fleet as last published, by state (ready, not_ready, draining).",
		}, []string{"fleet", "state"}),
	}
	if reg != nil {
		reg.MustRegister(m.Publishes, m.Endpoints)
	}
	return m
}
