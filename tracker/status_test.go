package tracker_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/promtest"
	"github.com/wsgate/wsgate/tracker"
)

func statusOf(t *testing.T, h http.Handler) tracker.Status {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /status: %d %s", rec.Code, rec.Body)
	}
	var st tracker.Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("GET /status: %v in %s", err, rec.Body)
	}
	if len(st.Fleets) != 1 {
		t.Fatalf("GET /status: fleets %+v, want chat alone", st.Fleets)
	}
	return st
}

// The recovery wait after data loss refuses with reason recovering, not
// redis_down, and says so in /status and the gauges; a Redis that does
// not answer refuses with redis_down. What is refused does not change.
func TestRecoveryWaitToldApartFromRedisDown(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	reg := prometheus.NewRegistry()
	tr, err := tracker.New(tracker.Config{
		InstanceID: "a", Fleets: []fleets.Fleet{fleetCfg("chat", 2, "10.0.0.1:80")}, Heartbeat: time.Second,
		InstanceTTL: 5 * time.Second, RedisTimeout: time.Second, Fallback: tracker.FallbackShare,
	}, storeOn(rdb), tracker.WithClock(clk.Now), tracker.WithMetrics(tracker.NewMetrics(reg)))
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(tracker.NewCollector(tr, false))
	h := tr.TelemetryHandler(reg)
	gauges := func() (granting, recovering, synced float64) {
		s := promtest.Samples(t, reg)
		return s["wsgate_tracker_granting{fleet=chat}"], s["wsgate_tracker_recovering{fleet=chat}"],
			s["wsgate_tracker_heartbeat_last_success_timestamp_seconds{fleet=chat}"]
	}
	if g, r, hb := gauges(); g != 0 || r != 0 || hb != 0 {
		t.Errorf("before any heartbeat: granting %v recovering %v heartbeat %v, want 0 0 0", g, r, hb)
	}
	if st := statusOf(t, h).Fleets[0]; st.Granting || st.Recovering || st.LastHeartbeatAge != -1 {
		t.Errorf("before any heartbeat: %+v", st)
	}

	base := time.Now()
	mr.SetTime(base)
	heartbeat(t, tr) // a new epoch: its recovery wait begins
	if r := admit(t, tr, "chat"); r.Admitted || r.Reason != store.ReasonRecovering || r.RetryAfter != time.Second {
		t.Fatalf("during the recovery wait: %+v, want refused, recovering, Retry-After 1s", r)
	}
	if g, r, hb := gauges(); g != 0 || r != 1 || hb < float64(base.Add(-time.Minute).Unix()) {
		t.Errorf("during the recovery wait: granting %v recovering %v heartbeat %v, want 0 1 now", g, r, hb)
	}
	st := statusOf(t, h).Fleets[0]
	if st.Granting || !st.Recovering || st.RecoveryWaitLeft <= 0 || st.RecoveryWaitLeft > 5 || st.Redis != "ok" || st.LastHeartbeatAge < 0 {
		t.Errorf("during the recovery wait: %+v, want recovering with 0-5s left, redis ok", st)
	}
	s := promtest.Samples(t, reg)
	if n := s["wsgate_tracker_admissions_total{fleet=chat,reason=recovering,result=rejected}"]; n != 1 {
		t.Errorf("recovering rejections counted %v, want 1", n)
	}
	if n := s["wsgate_tracker_admissions_total{fleet=chat,reason=redis_down,result=rejected}"]; n != 0 {
		t.Errorf("redis_down rejections counted %v during the recovery wait, want 0", n)
	}
	if n := s["wsgate_tracker_fallback_decisions_total{fleet=chat,why=recovering}"]; n != 1 {
		t.Errorf("fallback why=recovering %v, want 1 (the why label is kept)", n)
	}

	mr.SetTime(base.Add(5 * time.Second))
	clk.Advance(5 * time.Second)
	heartbeat(t, tr) // confirms the wait and flushes the rejection to Redis
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("after the wait: %+v, want admitted", r)
	}
	if g, r, _ := gauges(); g != 1 || r != 0 {
		t.Errorf("after the wait: granting %v recovering %v, want 1 0", g, r)
	}
	sum, err := storeOn(rdb).Summary(t.Context(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if w := sum.Rejections[store.ReasonRecovering]; w.M5 != 1 {
		t.Errorf("recovering rejections in Redis' windows: %+v, want 1 in 5m", w)
	}

	mr.SetError("ERR outage")
	for i := 0; i < 3; i++ {
		// The one connection's slot is held, the cap is 2: the share
		// fallback has nothing to give.
		if r := admit(t, tr, "chat"); r.Admitted || r.Reason != store.ReasonRedisDown {
			t.Fatalf("Redis failing: %+v, want redis_down", r)
		}
	}
	if g, r, _ := gauges(); g != 0 || r != 0 {
		t.Errorf("Redis failing: granting %v recovering %v, want 0 0", g, r)
	}
	if st := statusOf(t, h).Fleets[0]; st.Granting || st.Recovering || !st.Degraded || !strings.Contains(st.Redis, "ERR") {
		t.Errorf("Redis failing: %+v, want degraded, what Redis said", st)
	}
}

// Every series a rule or a dashboard reads exists at 0 before any event,
// per fleet and label value; a fleet added live gets them, one removed
// loses them once it is forgotten.
func TestSeriesExistFromTheFirstScrape(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	reg := prometheus.NewRegistry()
	tr, err := tracker.New(tracker.Config{
		InstanceID: "a", Fleets: []fleets.Fleet{fleetCfg("chat", 2, "10.0.0.1:80")}, Heartbeat: time.Second,
		InstanceTTL: 5 * time.Second, RedisTimeout: time.Second,
	}, storeOn(rdb), tracker.WithClock(clk.Now), tracker.WithMetrics(tracker.NewMetrics(reg)))
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(tracker.NewCollector(tr, false))
	fleets.NewReloadMetrics(reg, "tracker")
	want := func(fleet string) []string {
		out := []string{
			"wsgate_tracker_fallback_active{fleet=" + fleet + "}",
			"wsgate_tracker_reused_slots_total{fleet=" + fleet + "}",
			"wsgate_tracker_redis_replication_safe{fleet=" + fleet + "}",
			"wsgate_tracker_connections{fleet=" + fleet + "}",
			"wsgate_tracker_granting{fleet=" + fleet + "}",
			"wsgate_tracker_recovering{fleet=" + fleet + "}",
			"wsgate_tracker_heartbeat_last_success_timestamp_seconds{fleet=" + fleet + "}",
			"wsgate_tracker_admissions_total{fleet=" + fleet + ",reason=,result=admitted}",
			"wsgate_tracker_connections_expired_total{fleet=" + fleet + ",why=establish}",
			"wsgate_tracker_connections_expired_total{fleet=" + fleet + ",why=lease}",
		}
		for _, r := range store.Reasons {
			out = append(out, "wsgate_tracker_admissions_total{fleet="+fleet+",reason="+string(r)+",result=rejected}")
		}
		for _, why := range []string{"redis_error", "not_replicated", "gate_busy", "queued", "degraded", "layout", "epoch", "recovering", "lease"} {
			out = append(out, "wsgate_tracker_fallback_decisions_total{fleet="+fleet+",why="+why+"}")
		}
		return out
	}
	s := promtest.Samples(t, reg)
	global := []string{"wsgate_tracker_config_reloads_total{result=applied}", "wsgate_tracker_config_reloads_total{result=invalid}",
		"wsgate_tracker_config_reloads_total{result=unreadable}"}
	for _, op := range []string{"admit", "release", "sync", "set_pods"} {
		global = append(global, "wsgate_tracker_redis_errors_total{op="+op+"}")
	}
	for _, name := range append(want("chat"), global...) {
		if v, ok := s[name]; !ok || v != 0 {
			t.Errorf("first scrape: %s = %v (present %v), want 0", name, v, ok)
		}
	}
	if _, err := tr.Apply([]fleets.Fleet{fleetCfg("chat", 2, "10.0.0.1:80"), fleetCfg("video", 2, "10.0.0.2:80")}); err != nil {
		t.Fatal(err)
	}
	s = promtest.Samples(t, reg)
	for _, name := range want("video") {
		if _, ok := s[name]; !ok {
			t.Errorf("after video was added: %s missing", name)
		}
	}
	start(t, mr, clk, tr)
	if _, err := tr.Apply([]fleets.Fleet{fleetCfg("chat", 2, "10.0.0.1:80")}); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, tr) // video holds nothing: this instance leaves it
	for name := range promtest.Samples(t, reg) {
		if strings.Contains(name, "fleet=video") {
			t.Errorf("video removed and forgotten: %s still exported", name)
		}
	}
}

// A Redis that lost its data fences the next admission by its epoch: it
// and every admission after it, until the heartbeat that joins the new
// epoch's wait, are refused as recovering (Redis answers; the fleet is
// fenced, not degraded), never as redis_down.
func TestEpochFenceRefusesAsRecovering(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr, err := tracker.New(tracker.Config{
		InstanceID: "a", Fleets: []fleets.Fleet{fleetCfg("chat", 1, "10.0.0.1:80")}, Heartbeat: time.Second,
		InstanceTTL: 5 * time.Second, RedisTimeout: time.Second, Fallback: tracker.FallbackShare,
	}, storeOn(rdb), tracker.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now()
	mr.SetTime(base)
	heartbeat(t, tr)
	mr.SetTime(base.Add(5 * time.Second))
	clk.Advance(5 * time.Second)
	heartbeat(t, tr) // the wait is over
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("after the wait: %+v, want admitted", r)
	}
	mr.FlushAll()
	for i := range 2 {
		// The pod is full (cap 1): the share fallback has nothing to give.
		if r := admit(t, tr, "chat"); r.Admitted || r.Reason != store.ReasonRecovering {
			t.Fatalf("admission %d after Redis lost its data: %+v, want refused, recovering", i, r)
		}
	}
}
