package tracker

import "github.com/prometheus/client_golang/prometheus"

// connectionsDesc describes this instance's live connections per pod: the
// local truth that every heartbeat publishes to Redis.
var connectionsDesc = prometheus.NewDesc(
	"wsgate_tracker_connections",
	"Live connections this tracker instance admitted and has not released, by fleet and pod.",
	[]string{"fleet", "pod"}, nil,
)

// Collector exposes a Tracker's live connections by fleet and pod, read at
// scrape time so the gauge is never out of step with the local truth.
type Collector struct{ t *Tracker }

// NewCollector returns a Collector for t; register it on the registry
// Prometheus scrapes.
func NewCollector(t *Tracker) *Collector { return &Collector{t: t} }

// Describe sends the one descriptor of the collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) { ch <- connectionsDesc }

// Collect sends one gauge per pod that holds connections of this instance.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, name := range c.t.Fleets() {
		counts, err := c.t.LocalCounts(name)
		if err != nil {
			continue // only an unknown fleet fails, and Fleets listed it
		}
		for pod, n := range counts {
			ch <- prometheus.MustNewConstMetric(connectionsDesc, prometheus.GaugeValue, float64(n), name, pod)
		}
	}
}

// Metrics returns the collectors the tracker updates, so that components
// beside it (the access-log receiver) count into the same ones.
func (t *Tracker) Metrics() *Metrics { return t.metrics }
