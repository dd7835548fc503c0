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

// patchResults are the values of the patches counter's result label.
var patchResults = []string{"ok", "forbidden", "conflict", "not_found", "error"}

// AddFleet creates fleet's series at 0 (scaler.FleetSeries: the scaler
// calls it for every configured fleet), so that rules and dashboards see
// them from the first scrape.
func (h *Hook) AddFleet(fleet string) {
	for _, r := range patchResults {
		h.metrics.Patches.WithLabelValues(fleet, r)
	}
	h.metrics.Draining.WithLabelValues(fleet).Set(0)
	h.metrics.Holding.WithLabelValues(fleet).Set(0)
}

// RemoveFleet deletes the series of a fleet no longer configured.
func (h *Hook) RemoveFleet(fleet string) {
	l := prometheus.Labels{"fleet": fleet}
	h.metrics.Patches.DeletePartialMatch(l)
	h.metrics.Draining.DeletePartialMatch(l)
	h.metrics.Holding.DeletePartialMatch(l)
}
