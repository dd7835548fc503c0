package podcost

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the hook's Prometheus collectors.
type Metrics struct {
	Patches  *prometheus.CounterVec
	Draining *prometheus.GaugeVec
	Holding  *prometheus.GaugeVec
}

// NewMetrics creates the hook's collectors and registers them on reg
// (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Patches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_scaler_podcost_patches_total",
			Help: "pod-deletion-cost patches by fleet and result (ok, forbidden, conflict, not_found, error).",
		}, []string{"fleet", "result"}),
		Draining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_scaler_podcost_draining_pods",
			Help: "Pods of a fleet marked draining ahead of a scale-down.",
		}, []string{"fleet"}),
		Holding: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_scaler_podcost_holding",
			Help: "1 while a fleet's scale-down is held until its pods are prepared.",
		}, []string{"fleet"}),
	}
	if reg != nil {
		reg.MustRegister(m.Patches, m.Draining, m.Holding)
	}
	return m
}
