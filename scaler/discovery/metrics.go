package discovery

import "github.com/prometheus/client_golang/prometheus"

// Metrics are discovery's Prometheus collectors.
type Metrics struct {
	Publishes *prometheus.CounterVec
	Endpoints *prometheus.GaugeVec
	// LayoutMismatch is 1 while the fleet's shards differ from the layout
	// Redis records for it: its registry is not written.
	LayoutMismatch *prometheus.GaugeVec
}

// NewMetrics creates discovery's collectors and registers them on reg
// (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_scaler_discovery_publishes_total",
			Help: "Writes of a fleet's pod registry to Redis by result (ok, error, layout_mismatch: refused, the fleet's shards differ from the layout Redis records).",
		}, []string{"fleet", "result"}),
		Endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_scaler_discovery_pods",
			Help: "Pods of a fleet as last published, by state (ready, not_ready, draining).",
		}, []string{"fleet", "state"}),
		LayoutMismatch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_scaler_discovery_layout_mismatch",
			Help: "1 while a fleet's shards in the scaler's fleets file differ from the layout Redis records for it: its pod registry is not written until the fleets file (or the layout, by resharding) is fixed.",
		}, []string{"fleet"}),
	}
	if reg != nil {
		reg.MustRegister(m.Publishes, m.Endpoints, m.LayoutMismatch)
	}
	return m
}
