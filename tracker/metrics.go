package tracker

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the tracker's Prometheus collectors, registered on the
// Registerer given to NewMetrics (never the global default).
type Metrics struct {
	Admissions       *prometheus.CounterVec
	AdmitSeconds     prometheus.Histogram
	RedisErrors      *prometheus.CounterVec
	Degraded         *prometheus.GaugeVec
	Fallbacks        *prometheus.CounterVec
	FallbackMode     *prometheus.GaugeVec
	Expired          *prometheus.CounterVec
	AccessLogEntries *prometheus.CounterVec
	BatchSize        *prometheus.HistogramVec
	Reused           *prometheus.CounterVec
	Hints            *prometheus.CounterVec
	ReplicationSafe  *prometheus.GaugeVec
	LayoutMismatch   *prometheus.GaugeVec
	LayoutUnknown    *prometheus.GaugeVec
	Heartbeats       *prometheus.CounterVec
}

// NewMetrics creates the tracker's collectors and registers them on reg
// (nil: not registered, as in tests that do not look at them).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_tracker_admissions_total",
			Help: "Admission decisions by fleet, result (admitted, rejected) and reason (empty when admitted).",
		}, []string{"fleet", "result", "reason"}),
		AdmitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wsgate_tracker_admission_duration_seconds",
			Help:    "Time to decide one admission, Redis round trip included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5},
		}),
		RedisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_tracker_redis_errors_total",
			Help: "Failed Redis calls by operation (admit, release, sync, set_pods, leave).",
		}, []string{"op"}),
		Degraded: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_tracker_fallback_active",
			Help: "1 while the fleet admits from local state because Redis is unreachable.",
		}, []string{"fleet"}),
		Fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_tracker_fallback_decisions_total",
			Help: "Admissions Redis did not decide, by fleet and why: redis_error, not_replicated (--redis-wait-replicas: the replicas did not acknowledge the call in time), gate_busy (a heartbeat held the admission past --redis-timeout), queued (calls in flight did), degraded, epoch, recovering, lease (see PROTOCOL.md).",
		}, []string{"fleet", "why"}),
		FallbackMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_tracker_fallback_mode",
			Help: "The configured fallback mode (share, closed, open): 1 for the one in force.",
		}, []string{"mode"}),
		Expired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_tracker_connections_expired_total",
			Help: "Connections released by the tracker itself: never established in time (establish) or lease not renewed (lease).",
		}, []string{"fleet", "why"}),
		AccessLogEntries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_tracker_access_log_entries_total",
			Help: "Envoy access-log entries received, by type (established, periodic, end; unknown, other, tcp) and outcome (ok, adopted, refused: not this instance's to adopt, unknown_conn, no_conn, error: not applied; malformed, ignored); each pair the receiver counts is at 0 from its start.",
		}, []string{"type", "outcome"}),
		BatchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wsgate_tracker_redis_batch_size",
			Help:    "Admissions or releases per Redis script call, by op (admit, release): what arrived while the previous call was in flight.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
		}, []string{"op"}),
		Reused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_tracker_reused_slots_total",
			Help: "Admissions decided without a Redis call: into a slot one of this instance's connections had just freed, whose release was still queued (PROTOCOL.md, Reuse).",
		}, []string{"fleet"}),
		Hints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_tracker_admit_hints_total",
			Help: "Admissions sent to Redis with this instance's guess of the pod, by outcome: taken (granted on it without the pick: one call less) or refused (the pick decided: a call more; under spread, no more guesses until the next heartbeat). PROTOCOL.md, Hinted admission.",
		}, []string{"fleet", "outcome"}),
		ReplicationSafe: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_tracker_redis_replication_safe",
			Help: "1 when the last replication check (at start and at each new epoch) found that the fleet's Redis keeps the cap under split brain (no replicas, or admissions wait for every replica, and expired instances are not reaped beside replicas), for every group of a fleet with shards; 0 when it cannot, or before a check could reach Redis for each group (PROTOCOL.md, Replication and failover).",
		}, []string{"fleet"}),
		LayoutMismatch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_tracker_layout_mismatch",
			Help: "1 while the fleet's shards differ from the layout Redis recorded for it: none of its groups admits or releases through Redis, only the fallback decides (PROTOCOL.md, Shards; the log says what to do).",
		}, []string{"fleet"}),
		LayoutUnknown: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsgate_tracker_layout_unknown",
			Help: "1 while no layout check has reached the fleet's Redis (group 0's and its mirror's; e.g. NOPERM, group 0's primary down since the start): the fleet uses no Redis and admits nothing until one does (PROTOCOL.md, Shards; the log says why).",
		}, []string{"fleet"}),
		Heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgate_tracker_heartbeats_total",
			Help: "Heartbeat calls Redis answered, by fleet and kind: full (re-states every count: the first of a run, the one after a call whose outcome is unknown or after a refused delta, and one in 30 in any case), delta (applied: only the pods whose counts moved), refused_delta (Redis no longer held the delta's base: reaped, left, a new epoch or a lost reply; a full one follows at once). Failed calls are in wsgate_tracker_redis_errors_total{op=\"sync\"}. See PROTOCOL.md, Delta heartbeats.",
		}, []string{"fleet", "kind"}),
	}
	for _, op := range redisOps {
		m.RedisErrors.WithLabelValues(op)
	}
	if reg != nil {
		reg.MustRegister(m.Admissions, m.AdmitSeconds, m.RedisErrors, m.Degraded, m.Fallbacks, m.FallbackMode, m.Expired, m.AccessLogEntries, m.BatchSize, m.Reused, m.Hints, m.ReplicationSafe, m.LayoutMismatch, m.LayoutUnknown, m.Heartbeats)
	}
	return m
}

// redisOps are the values of redis_errors_total's op label.
var redisOps = []string{"admit", "release", "sync", "set_pods", "leave"}

// addFleet creates fleet's series at 0, so that a rule or a dashboard
// reading them tells "none yet" from "not scraped" (the admissions
// counters are made with the fleet, newFleet).
func (m *Metrics) addFleet(fleet string) {
	m.Degraded.WithLabelValues(fleet).Set(0)
	for _, why := range fallbackWhys {
		m.Fallbacks.WithLabelValues(fleet, why)
	}
	for _, why := range expiredWhys {
		m.Expired.WithLabelValues(fleet, why)
	}
	m.Reused.WithLabelValues(fleet)
	for _, outcome := range hintOutcomes {
		m.Hints.WithLabelValues(fleet, outcome)
	}
	m.ReplicationSafe.WithLabelValues(fleet)
	m.LayoutMismatch.WithLabelValues(fleet).Set(0)
	m.LayoutUnknown.WithLabelValues(fleet).Set(1)
	for _, kind := range heartbeatKinds {
		m.Heartbeats.WithLabelValues(fleet, kind)
	}
}

// hintOutcomes are the values of admit_hints_total's outcome label.
var hintOutcomes = []string{"taken", "refused"}

// heartbeatKinds are the values of heartbeats_total's kind label.
var heartbeatKinds = []string{"full", "delta", "refused_delta"}

// removeFleet deletes the series of a fleet the tracker forgot (it left
// the configuration and its last connection ended).
func (m *Metrics) removeFleet(fleet string) {
	l := prometheus.Labels{"fleet": fleet}
	m.Admissions.DeletePartialMatch(l)
	m.Degraded.DeletePartialMatch(l)
	m.Fallbacks.DeletePartialMatch(l)
	m.Expired.DeletePartialMatch(l)
	m.Reused.DeletePartialMatch(l)
	m.Hints.DeletePartialMatch(l)
	m.ReplicationSafe.DeletePartialMatch(l)
	m.LayoutMismatch.DeletePartialMatch(l)
	m.LayoutUnknown.DeletePartialMatch(l)
	m.Heartbeats.DeletePartialMatch(l)
}

// expiredWhys are the values of connections_expired_total's why label.
var expiredWhys = []string{"establish", "lease"}
