package tracker

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The collector's descriptors: read at scrape time from the fleets' state,
// so they exist from the first scrape (per configured fleet) and are never
// out of step with what admissions see.
var (
	connectionsPodDesc = prometheus.NewDesc(
		"wsgate_tracker_connections",
		"Live connections this tracker instance admitted and has not released, by fleet and pod.",
		[]string{"fleet", "pod"}, nil,
	)
	connectionsFleetDesc = prometheus.NewDesc(
		"wsgate_tracker_connections",
		"Live connections this tracker instance admitted and has not released, by fleet (per pod: --metrics-per-pod, or the scaler's wsgate_scaler_pod_connections).",
		[]string{"fleet"}, nil,
	)
	grantingDesc = prometheus.NewDesc(
		"wsgate_tracker_granting",
		"1 while Redis decides the fleet's admissions; 0 during a recovery wait, while degraded (a Redis call failed) or fenced, and before the first heartbeat.",
		[]string{"fleet"}, nil,
	)
	recoveringDesc = prometheus.NewDesc(
		"wsgate_tracker_recovering",
		"1 while Redis answers but the fleet's epoch is in its recovery wait (after Redis lost or reloaded its state) and grants nothing.",
		[]string{"fleet"}, nil,
	)
	heartbeatDesc = prometheus.NewDesc(
		"wsgate_tracker_heartbeat_last_success_timestamp_seconds",
		"When this instance's last heartbeat of the fleet succeeded (Unix time; 0 before the first).",
		[]string{"fleet"}, nil,
	)
)

// Collector exposes a Tracker's per-fleet state: its live connections (by
// fleet, or by fleet and pod), whether Redis grants, the recovery wait, and
// the last successful heartbeat.
type Collector struct {
	t      *Tracker
	perPod bool
}

// NewCollector returns a Collector for t; register it on the registry
// Prometheus scrapes. perPod labels the connections gauge by pod: one
// series per backend pod this instance holds connections on, so the
// fleet's series grow as Envoy pods x backend pods; without it, one series
// per fleet (the scaler serves the per-pod numbers once per fleet).
func NewCollector(t *Tracker, perPod bool) *Collector { return &Collector{t: t, perPod: perPod} }

// Describe sends the collector's descriptors.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	if c.perPod {
		ch <- connectionsPodDesc
	} else {
		ch <- connectionsFleetDesc
	}
	ch <- grantingDesc
	ch <- recoveringDesc
	ch <- heartbeatDesc
}

// Collect sends each configured fleet's gauges.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, name := range c.t.Fleets() {
		fam, err := c.t.family(name)
		if err != nil {
			continue // only an unknown fleet fails, and Fleets listed it
		}
		st := fam.status(now)
		ch <- prometheus.MustNewConstMetric(grantingDesc, prometheus.GaugeValue, bit(st.Granting), name)
		ch <- prometheus.MustNewConstMetric(recoveringDesc, prometheus.GaugeValue, bit(st.Recovering), name)
		var synced float64
		if st.LastHeartbeat != nil {
			synced = float64(st.LastHeartbeat.UnixMilli()) / 1000
		}
		ch <- prometheus.MustNewConstMetric(heartbeatDesc, prometheus.GaugeValue, synced, name)
		if !c.perPod {
			ch <- prometheus.MustNewConstMetric(connectionsFleetDesc, prometheus.GaugeValue, float64(st.Connections), name)
			continue
		}
		counts, _ := c.t.LocalCounts(name)
		for pod, n := range counts {
			ch <- prometheus.MustNewConstMetric(connectionsPodDesc, prometheus.GaugeValue, float64(n), name, pod)
		}
	}
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Metrics returns the collectors the tracker updates, so that components
// beside it (the access-log receiver) count into the same ones.
func (t *Tracker) Metrics() *Metrics { return t.metrics }
