package scaler_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// testFleets: web (3 static pods, cap 2, no rate limit in the way), cold (no
// pods: every admission is no_pods) and edge (1 connection per second).
func testFleets() []fleets.Fleet {
	return []fleets.Fleet{
		{Name: "web", MaxConnectionsPerPod: 2, RatePerSecond: 1000, Burst: 1000, Pods: []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}},
		{Name: "cold", MaxConnectionsPerPod: 2, RatePerSecond: 1000, Burst: 1000},
		{Name: "edge", MaxConnectionsPerPod: 2, RatePerSecond: 1, Burst: 1, Pods: []string{"10.0.1.1:80"}},
	}
}

var quiet = slog.New(slog.DiscardHandler)

// ttl is the trackers' --instance-ttl and the scaler's InstanceTTL. Short:
// the tests run on a real redis-server, whose clock judges the leases and
// the recovery wait of a new epoch (one ttl) and cannot be moved.
const ttl = time.Second

// clock is the scaler's time: the real clock plus an offset tests move.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

type env struct {
	t      testing.TB
	redis  *redistest.Server
	rdb    *redis.Client
	store  *store.Store
	clock  *clock
	srv    *scaler.Server
	grpc   *scaler.GRPC
	reg    *prometheus.Registry
	client externalscaler.ExternalScalerClient
}

type opts struct {
	cfg     scaler.Config
	tls     *tls.Config
	gate    scaler.ScaleDownGate
	dialTLS *tls.Config
	judge   scaler.InstanceJudge
}

func start(t testing.TB, o opts) *env {
	t.Helper()
	rs := redistest.Start(t)
	e := &env{t: t, redis: rs, rdb: rs.Client(), clock: &clock{}, reg: prometheus.NewRegistry()}
	e.store = store.NewStore(e.rdb, "wsgate")
	cfg := o.cfg
	if cfg.Fleets == nil {
		cfg.Fleets = testFleets()
	}
	if cfg.Settle == 0 {
		cfg.Settle = time.Nanosecond
	}
	if cfg.InstanceTTL == 0 {
		cfg.InstanceTTL = ttl
	}
	sopts := []scaler.Option{scaler.WithLogger(quiet), scaler.WithClock(e.clock.now), scaler.WithMetrics(scaler.NewMetrics(e.reg))}
	if o.gate != nil {
		sopts = append(sopts, scaler.WithGate(o.gate))
	}
	if o.judge != nil {
		sopts = append(sopts, scaler.WithInstanceJudge(o.judge))
	}
	srv, err := scaler.New(cfg, e.store, sopts...)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	e.grpc = scaler.NewGRPC(srv, o.tls)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- e.grpc.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.grpc.Stop(ctx)
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	creds := insecure.NewCredentials()
	if o.dialTLS != nil {
		creds = credentials.NewTLS(o.dialTLS)
	}
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.client = externalscaler.NewExternalScalerClient(conn)
	return e
}

// tracker starts a tracker instance on the env's Redis and syncs it, ready
// to admit: a new epoch grants nothing until its recovery wait (one ttl of
// Redis' clock) is over and a tracker watched a ttl pass on its own clock,
// so it heartbeats until every fleet grants: the test goes on from a fresh
// lease. Leases are
// judged by Redis' clock, so moving the scaler's clock does not end them.
func (e *env) tracker(id string) *tracker.Tracker {
	e.t.Helper()
	return e.trackerWith(tracker.Config{InstanceID: id, Fleets: testFleets(), Heartbeat: ttl / 5, InstanceTTL: ttl})
}

func (e *env) trackerWith(cfg tracker.Config) *tracker.Tracker {
	e.t.Helper()
	tr, err := tracker.New(cfg, e.store, tracker.WithLogger(quiet))
	if err != nil {
		e.t.Fatal(err)
	}
	await.Granting(e.t, "tracker "+cfg.InstanceID, tr, 10*time.Second)
	return tr
}

// awaitLeaseEnd returns once Redis' clock has passed the lease of instance
// id in fleet: Redis gives no event for it, so it polls.
func (e *env) awaitLeaseEnd(fleet, id string) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap, err := e.store.Snapshot(context.Background(), fleet, time.Now())
		if err != nil {
			e.t.Fatal(err)
		}
		var lease time.Time
		for _, in := range snap.Instances {
			if in.ID == id {
				lease = in.LeaseUntil
			}
		}
		if lease.IsZero() {
			e.t.Fatalf("%s is not an instance of %s", id, fleet)
		}
		if snap.RedisNow.After(lease) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s's lease in %s (%s) not over by Redis' clock (%s) in 10s", id, fleet, lease, snap.RedisNow)
		}
		time.Sleep(min(lease.Sub(snap.RedisNow)+time.Millisecond, 50*time.Millisecond))
	}
}

// instances lists the instances Redis holds for fleet.
func (e *env) instances(fleet string) map[string]uint64 {
	e.t.Helper()
	m, err := e.store.Instances(context.Background(), fleet)
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

func (e *env) heartbeat(tr *tracker.Tracker) {
	e.t.Helper()
	if err := tr.Heartbeat(context.Background()); err != nil {
		e.t.Fatalf("heartbeat: %v", err)
	}
}

// admit makes n admissions and returns how many were admitted, then
// heartbeats tr: the scaler counts what the instances' heartbeats
// published (tracker/PROTOCOL.md, "The fleet's live count").
func (e *env) admit(tr *tracker.Tracker, fleet string, n int) (admitted int, conns []string) {
	e.t.Helper()
	for range n {
		res, err := tr.Admit(context.Background(), fleet)
		if err != nil {
			e.t.Fatal(err)
		}
		if res.Admitted {
			admitted++
			conns = append(conns, res.Conn)
		}
	}
	e.heartbeat(tr)
	return admitted, conns
}

func ref(md ...string) *externalscaler.ScaledObjectRef {
	m := map[string]string{}
	for i := 0; i+1 < len(md); i += 2 {
		m[md[i]] = md[i+1]
	}
	return &externalscaler.ScaledObjectRef{Name: "so", Namespace: "ns", ScalerMetadata: m}
}

func (e *env) metric(md ...string) float64 {
	e.t.Helper()
	v, err := e.metricErr(md...)
	if err != nil {
		e.t.Fatalf("GetMetrics(%v): %v", md, err)
	}
	return v
}

func (e *env) metricErr(md ...string) (float64, error) { return e.metricOfErr(ref(md...)) }

func (e *env) metricOfErr(r *externalscaler.ScaledObjectRef) (float64, error) {
	res, err := e.client.GetMetrics(context.Background(), &externalscaler.GetMetricsRequest{ScaledObjectRef: r})
	if err != nil {
		return 0, err
	}
	if len(res.MetricValues) != 1 {
		e.t.Fatalf("GetMetrics: %d values, want 1", len(res.MetricValues))
	}
	return res.MetricValues[0].MetricValueFloat, nil
}

func (e *env) active(md ...string) bool {
	e.t.Helper()
	res, err := e.client.IsActive(context.Background(), ref(md...))
	if err != nil {
		e.t.Fatalf("IsActive(%v): %v", md, err)
	}
	return res.Result
}

// scalerHash is the decision hash of the trigger ref(md...) names (fleet
// "web" unless md says otherwise).
func (e *env) scalerHash(fleet string, md ...string) map[string]string {
	e.t.Helper()
	return e.decision(fleet, ref(append([]string{"fleet", fleet}, md...)...))
}

// decision is the decision hash the scaler keeps for the trigger of r.
func (e *env) decision(fleet string, r *externalscaler.ScaledObjectRef) map[string]string {
	e.t.Helper()
	tr, err := scaler.ParseTrigger(r.GetScalerMetadata())
	if err != nil {
		e.t.Fatal(err)
	}
	h, err := e.rdb.HGetAll(context.Background(), e.store.Keys(fleet).Scaler(scaler.TriggerID(r, tr))).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

// metricOf is GetMetrics' value for the trigger r.
func (e *env) metricOf(r *externalscaler.ScaledObjectRef) float64 {
	e.t.Helper()
	v, err := e.metricOfErr(r)
	if err != nil {
		e.t.Fatalf("GetMetrics(%s/%s): %v", r.Namespace, r.Name, err)
	}
	return v
}

// named is ref(md...) for the ScaledObject ns/name.
func named(name string, md ...string) *externalscaler.ScaledObjectRef {
	r := ref(md...)
	r.Name = name
	return r
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestGetMetricsReportsEachMetric(t *testing.T) {
	e := start(t, opts{})
	tr := e.tracker("envoy-a")
	if n, _ := e.admit(tr, "web", 4); n != 4 {
		t.Fatalf("admitted %d of 4", n)
	}
	if got := e.metric("fleet", "web", "metric", "connections"); got != 4 {
		t.Errorf("connections = %v, want 4", got)
	}
	if got := e.metric("fleet", "web", "metric", "saturation"); !near(got, 4.0/6) {
		t.Errorf("saturation = %v, want 4/6", got)
	}
	// ceil(4 / (2 × 0.8)) = 3
	if got := e.metric("fleet", "web"); got != 3 {
		t.Errorf("desiredReplicas = %v, want 3", got)
	}
	h := e.scalerHash("web")
	if h["recommended"] != "3" || h["reported"] != "3" || h["ready"] != "1" || h["readyPods"] != "3" || h["reason"] != "capacity target" || h["updatedMs"] == "" {
		t.Errorf("scaler hash = %v", h)
	}

	// Fill the last two slots, then one capacity rejection: every pod is at
	// the cap, so the policy asks for one more pod than ready.
	if n, _ := e.admit(tr, "web", 3); n != 2 {
		t.Fatalf("admitted %d of 3, want 2 and a capacity rejection", n)
	}
	if got := e.metric("fleet", "web"); got != 4 {
		t.Errorf("desiredReplicas at the cap = %v, want 4", got)
	}
	if got := e.metric("fleet", "web", "metric", "saturation"); got != 1 {
		t.Errorf("saturation at the cap = %v, want 1", got)
	}

	// rate_limit rejections drive rateLimitPressure, not the backend.
	if n, _ := e.admit(tr, "edge", 3); n != 1 {
		t.Fatalf("edge admitted %d of 3, want 1 (1 per second)", n)
	}
	e.heartbeat(tr) // flushes the buffered rate_limit rejections
	if got, want := e.metric("fleet", "edge", "metric", "rateLimitPressure"), 2.0/300/1/1; !near(got, want) {
		t.Errorf("rateLimitPressure = %v, want %v", got, want)
	}
	if got := e.metric("fleet", "edge"); got != 1 {
		t.Errorf("edge desiredReplicas = %v, want 1: rate limiting is not backend pressure", got)
	}
	if got := mustGauge(t, e.reg, "wsgate_scaler_reported_value", "web", "desiredReplicas"); got != 4 {
		t.Errorf("reported gauge = %v, want 4", got)
	}
}

func mustGauge(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i, l := range m.GetLabel() {
				if i >= len(labels) || l.GetValue() != labels[i] {
					continue next
				}
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s%v gathered", name, labels)
	return 0
}

func TestGetMetricSpecAndMetricNames(t *testing.T) {
	e := start(t, opts{})
	e.tracker("envoy-a")
	for _, c := range []struct {
		metric string
		target float64
	}{{"desiredReplicas", 1}, {"connections", 1.6}, {"saturation", 0.8}, {"rateLimitPressure", 0.1}} {
		res, err := e.client.GetMetricSpec(context.Background(), ref("fleet", "web", "metric", c.metric))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.MetricSpecs) != 1 || !near(res.MetricSpecs[0].TargetSizeFloat, c.target) {
			t.Fatalf("%s: spec %v, want target %v", c.metric, res.MetricSpecs, c.target)
		}
		name := res.MetricSpecs[0].MetricName
		if name != strings.ToLower("wsgate-web-"+c.metric) {
			t.Errorf("%s: metric name %q", c.metric, name)
		}
		// KEDA sends back the name it was given.
		got, err := e.client.GetMetrics(context.Background(), &externalscaler.GetMetricsRequest{ScaledObjectRef: ref("fleet", "web", "metric", c.metric), MetricName: name})
		if err != nil || len(got.MetricValues) != 1 || got.MetricValues[0].MetricName != name {
			t.Errorf("%s: GetMetrics by name = %v, %v", c.metric, got, err)
		}
	}
}

func TestBadMetadataIsInvalidArgument(t *testing.T) {
	e := start(t, opts{})
	e.tracker("envoy-a")
	cases := []struct {
		md       []string
		code     codes.Code
		mentions []string
	}{
		{nil, codes.InvalidArgument, []string{`"fleet"`}},
		{[]string{"fleet", "web", "metric", "cpu"}, codes.InvalidArgument, []string{`"metric"`, "desiredReplicas", "connections", "saturation", "rateLimitPressure"}},
		{[]string{"fleet", "web", "targetUtilization", "1.5"}, codes.InvalidArgument, []string{`"targetUtilization"`, "(0, 1]"}},
		{[]string{"fleet", "web", "scaleDownGuard", "forever"}, codes.InvalidArgument, []string{`"scaleDownGuard"`, "15m"}},
		{[]string{"fleet", "nope"}, codes.NotFound, []string{`"nope"`, "web"}},
		{[]string{"fleet", "web", "rateLimitTarget", "Inf"}, codes.InvalidArgument, []string{`"rateLimitTarget"`, "0.001"}},
		{[]string{"fleet", "web", "rateLimitTarget", "0.0001"}, codes.InvalidArgument, []string{`"rateLimitTarget"`, "0.001"}},
	}
	for _, c := range cases {
		calls := map[string]error{}
		_, calls["GetMetrics"] = e.client.GetMetrics(context.Background(), &externalscaler.GetMetricsRequest{ScaledObjectRef: ref(c.md...)})
		_, calls["GetMetricSpec"] = e.client.GetMetricSpec(context.Background(), ref(c.md...))
		_, calls["IsActive"] = e.client.IsActive(context.Background(), ref(c.md...))
		st, err := e.client.StreamIsActive(context.Background(), ref(c.md...))
		if err == nil {
			_, err = st.Recv()
		}
		calls["StreamIsActive"] = err
		for rpc, err := range calls {
			if status.Code(err) != c.code {
				t.Errorf("%s(%v): %v, want %s", rpc, c.md, err, c.code)
				continue
			}
			for _, m := range c.mentions {
				if !strings.Contains(status.Convert(err).Message(), m) {
					t.Errorf("%s(%v): %q does not mention %s", rpc, c.md, status.Convert(err).Message(), m)
				}
			}
		}
	}
	_, err := e.client.GetMetrics(context.Background(), &externalscaler.GetMetricsRequest{ScaledObjectRef: ref("fleet", "web"), MetricName: "wsgate-web-connections"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "wsgate-web-desiredreplicas") {
		t.Errorf("wrong metric name: %v", err)
	}
}

func TestIsActive(t *testing.T) {
	e := start(t, opts{})
	tr := e.tracker("envoy-a")
	if e.active("fleet", "web") {
		t.Error("web active without connections or rejections")
	}
	_, conns := e.admit(tr, "web", 1)
	if !e.active("fleet", "web") {
		t.Error("web inactive with a live connection")
	}
	if e.active("fleet", "web", "activationConnections", "1") {
		t.Error("web active at the activation threshold")
	}
	if err := tr.Release(context.Background(), conns[0]); err != nil {
		t.Fatal(err)
	}
	if err := tr.Flush(context.Background()); err != nil { // Redis has it
		t.Fatal(err)
	}
	e.heartbeat(tr) // and the scaler's count
	if e.active("fleet", "web") {
		t.Error("web active after its only connection left")
	}
	// A fleet at zero replicas activates on its first rejected connection,
	// and asks for one pod.
	if e.active("fleet", "cold") {
		t.Error("cold active before any admission")
	}
	if n, _ := e.admit(tr, "cold", 1); n != 0 {
		t.Fatal("cold admitted without pods")
	}
	if !e.active("fleet", "cold") {
		t.Error("cold inactive after a no_pods rejection")
	}
	if got := e.metric("fleet", "cold"); got != 1 {
		t.Errorf("cold desiredReplicas = %v, want 1", got)
	}
}

// TestReaperRemovesDeadTrackers: the scaler reaps an instance on two
// witnesses (tracker/PROTOCOL.md, "Leases and clocks"): its lease ended by
// Redis' clock, and the scaler itself watched its seq stand still for a
// full InstanceTTL of its own clock. Either alone reaps nobody.
func TestReaperRemovesDeadTrackers(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: testFleets(), ExpiredInstances: fleets.ExpiredReap}})
	tr := e.tracker("envoy-a")
	e.admit(tr, "web", 3)
	// envoy-b's lease (an hour) outlasts the test in Redis: it shows the
	// scaler's witness alone reaps nobody. It is only in cold, so that web's
	// readiness sees envoy-a alone.
	e.trackerWith(tracker.Config{InstanceID: "envoy-b", Fleets: testFleets()[1:2], InstanceTTL: time.Hour})
	if got := e.metric("fleet", "web", "metric", "connections"); got != 3 {
		t.Fatalf("connections = %v, want 3", got)
	}
	e.awaitLeaseEnd("web", "envoy-a") // envoy-a died: no more heartbeats

	// Redis' witness alone: the scaler sees the instances for the first time.
	if err := e.srv.Reap(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.instances("web")["envoy-a"]; !ok {
		t.Fatal("envoy-a reaped on the scaler's first sight of it: its clock watched it stand still for no time")
	}

	e.clock.advance(ttl) // the scaler watched both stand still for a full TTL
	if err := e.srv.Reap(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.instances("web")["envoy-a"]; ok {
		t.Fatal("envoy-a not reaped: both witnesses say it is dead")
	}
	if _, ok := e.instances("cold")["envoy-b"]; !ok {
		t.Error("envoy-b reaped while its lease holds by Redis' clock: the scaler's clock alone reaped it")
	}
	// The vanished instance holds the metric for the settle time first: it
	// may only be cut off from Redis, its connections still up.
	if _, err := e.metricErr("fleet", "web", "metric", "connections"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "dropped from 1 to 0") {
		t.Fatalf("right after the reap: %v, want the metric held", err)
	}
	e.clock.advance(time.Second)
	if got := e.metric("fleet", "web", "metric", "connections"); got != 0 {
		t.Errorf("connections after reaping a dead tracker = %v, want 0", got)
	}
	if got := mustCounter(t, e.reg, "web"); got != 1 {
		t.Errorf("reaped counter = %v, want 1", got)
	}
}

// TestReaperKeepsExpiredInstancesWhenTold: with ExpiredInstances keep the
// scaler reaps nobody, whatever both witnesses say.
func TestReaperKeepsExpiredInstancesWhenTold(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: testFleets(), ExpiredInstances: fleets.ExpiredKeep}})
	tr := e.tracker("envoy-a")
	e.admit(tr, "web", 3)
	e.awaitLeaseEnd("web", "envoy-a")
	for range 2 {
		if err := e.srv.Reap(context.Background()); err != nil {
			t.Fatal(err)
		}
		e.clock.advance(2 * ttl)
	}
	if _, ok := e.instances("web")["envoy-a"]; !ok {
		t.Fatal("envoy-a reaped with ExpiredInstances keep")
	}
	snap, err := e.store.Snapshot(context.Background(), "web", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if n := snap.Load["10.0.0.1:80"] + snap.Load["10.0.0.2:80"] + snap.Load["10.0.0.3:80"]; n != 3 {
		t.Errorf("load %d after the reaper ran, want envoy-a's 3 still counted", n)
	}
}

// judge is Kubernetes' word on instances: id -> pod still listed; an id
// missing is one Kubernetes cannot judge.
type judge map[string]bool

func (j judge) InstanceAlive(_, id string) (alive, known bool) { alive, known = j[id]; return }

// TestReaperAsksKubernetesWithKube (issue 10, G): with ExpiredInstances kube
// an instance whose lease ended by both witnesses is reaped only when
// Kubernetes no longer lists its pod: a cut-off instance keeps its slots.
func TestReaperAsksKubernetesWithKube(t *testing.T) {
	fl := testFleets()
	for i := range fl {
		fl[i].EnvoyService = "envoy"
	}
	j := judge{"envoy-a": true, "envoy-b": false} // a only cut off, b gone, c unknown
	e := start(t, opts{cfg: scaler.Config{Fleets: fl, ExpiredInstances: fleets.ExpiredKube}, judge: j})
	for _, id := range []string{"envoy-a", "envoy-b", "envoy-c"} {
		e.admit(e.tracker(id), "web", 1)
	}
	for _, id := range []string{"envoy-a", "envoy-b", "envoy-c"} {
		e.awaitLeaseEnd("web", id)
	}
	for range 2 {
		if err := e.srv.Reap(context.Background()); err != nil {
			t.Fatal(err)
		}
		e.clock.advance(ttl)
	}
	got := e.instances("web")
	if _, ok := got["envoy-b"]; ok {
		t.Error("envoy-b not reaped: its lease ended and Kubernetes no longer lists its pod")
	}
	for _, id := range []string{"envoy-a", "envoy-c"} {
		if _, ok := got[id]; !ok {
			t.Errorf("%s reaped although Kubernetes did not say its pod is gone", id)
		}
	}
}

func TestKubeJudgeIsRequired(t *testing.T) {
	fl := testFleets()
	for i := range fl {
		fl[i].EnvoyService = "envoy"
	}
	store := store.NewStore(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), "wsgate")
	if _, err := scaler.New(scaler.Config{Fleets: fl, ExpiredInstances: fleets.ExpiredKube}, store); err == nil || !strings.Contains(err.Error(), "--kube") {
		t.Errorf("kube without a judge: %v, want an error naming --kube", err)
	}
	fl[1].EnvoyService = ""
	if _, err := scaler.New(scaler.Config{Fleets: fl, ExpiredInstances: fleets.ExpiredKube}, store, scaler.WithInstanceJudge(judge{})); err == nil || !strings.Contains(err.Error(), "fleet cold names no envoyService") {
		t.Errorf("kube with a fleet without envoyService: %v", err)
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, fleet string) float64 {
	t.Helper()
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "wsgate_scaler_reaped_instances_total" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == fleet {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no reaped counter for %s", fleet)
	return 0
}

// holdGate holds every scale-down at the ready count, as the deletion-cost
// hook does until the pods to remove are prepared.
type holdGate struct{ calls atomic.Int64 }

func (g *holdGate) Gate(_ context.Context, _ string, ready, recommended int) int {
	g.calls.Add(1)
	return max(ready, recommended)
}

func TestScaleDownGateDecidesWhatIsReported(t *testing.T) {
	g := &holdGate{}
	e := start(t, opts{gate: g})
	tr := e.tracker("envoy-a")
	e.admit(tr, "web", 1)
	// The policy wants 1 pod of the 3 ready; the gate holds 3.
	if got := e.metric("fleet", "web"); got != 3 {
		t.Errorf("reported %v, want the gate's 3", got)
	}
	h := e.scalerHash("web")
	if h["recommended"] != "1" || h["reported"] != "3" || !strings.Contains(h["reason"], "gate") {
		t.Errorf("scaler hash = %v", h)
	}
	if g.calls.Load() != 1 {
		t.Errorf("gate called %d times, want 1", g.calls.Load())
	}
	e.metric("fleet", "web", "metric", "connections")
	if g.calls.Load() != 1 {
		t.Error("gate called for the connections metric")
	}
}

func TestReadinessHoldsAfterRedisRestartUntilResync(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: testFleets(), Settle: time.Minute}})
	a, b, c := e.tracker("envoy-a"), e.tracker("envoy-b"), e.tracker("envoy-c")
	for _, tr := range []*tracker.Tracker{a, b, c} {
		e.admit(tr, "web", 2)
	}
	// Young epoch: held, whatever the data.
	if _, err := e.metricErr("fleet", "web"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "settle") {
		t.Fatalf("young epoch: %v, want Unavailable naming the settle time", err)
	}
	e.clock.advance(2 * time.Minute)
	if got := e.metric("fleet", "web"); got != 4 { // ceil(6/1.6)
		t.Fatalf("desiredReplicas = %v, want 4", got)
	}

	e.redis.Restart() // Redis loses everything
	e.heartbeat(a)    // new epoch, one of three trackers back
	if _, err := e.metricErr("fleet", "web"); status.Code(err) != codes.Unavailable {
		t.Fatalf("right after the restart: %v, want held", err) // the scaler sees the new epoch begin
	}
	e.clock.advance(2 * time.Minute)
	_, err := e.metricErr("fleet", "web")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "1 of 3") {
		t.Fatalf("after restart with 1 of 3 synced: %v, want Unavailable naming 1 of 3", err)
	}
	if h := e.scalerHash("web"); !strings.Contains(h["reason"], "held") || h["recommended"] != "" || h["reported"] != "" || h["ready"] != "0" {
		t.Errorf("scaler hash while held = %v", h)
	}
	if got := mustGauge(t, e.reg, "wsgate_scaler_ready", "web"); got != 0 {
		t.Errorf("ready gauge = %v while held", got)
	}
	// Held counts may say "active" (more demand can only be undercounted),
	// never "inactive".
	if !e.active("fleet", "web") {
		t.Error("IsActive false with a live connection while held")
	}
	if _, err := e.client.IsActive(context.Background(), ref("fleet", "web", "activationConnections", "100")); status.Code(err) != codes.Unavailable {
		t.Errorf("inactive while held: %v, want Unavailable", err)
	}

	e.heartbeat(b)
	e.heartbeat(c)
	if got := e.metric("fleet", "web"); got != 4 {
		t.Errorf("after re-sync desiredReplicas = %v, want 4", got)
	}
	if got := mustGauge(t, e.reg, "wsgate_scaler_ready", "web"); got != 1 {
		t.Errorf("ready gauge = %v after re-sync", got)
	}
}

func TestExpectedInstancesFlag(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: testFleets(), ExpectedInstances: 2}})
	e.tracker("envoy-a")
	if _, err := e.metricErr("fleet", "web"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "--expected-instances") {
		t.Fatalf("1 of 2 expected: %v", err)
	}
	e.tracker("envoy-b")
	if got := e.metric("fleet", "web"); got != 0 {
		t.Errorf("desiredReplicas = %v, want 0", got)
	}
}

// Apply (a changed fleets file) serves added fleets, forgets removed ones
// and refuses an invalid configuration whole.
func TestApplyChangesTheServedFleets(t *testing.T) {
	e := start(t, opts{})
	get := func(fleet string) error {
		_, err := e.client.GetMetricSpec(context.Background(), ref("fleet", fleet))
		return err
	}
	if err := get("game"); status.Code(err) != codes.NotFound {
		t.Fatalf("fleet game before it is configured: %v, want NotFound", err)
	}
	game := fleets.Fleet{Name: "game", MaxConnectionsPerPod: 3}
	if err := e.srv.Apply([]fleets.Fleet{game}); err != nil {
		t.Fatal(err)
	}
	if err := get("game"); err != nil {
		t.Fatalf("added fleet game: %v", err)
	}
	if err := get("web"); status.Code(err) != codes.NotFound {
		t.Fatalf("removed fleet web: %v, want NotFound", err)
	}
	if err := e.srv.Apply([]fleets.Fleet{game, game}); err == nil || !strings.Contains(err.Error(), "game defined twice") {
		t.Fatalf("apply of a fleet defined twice: %v", err)
	}
	if err := e.srv.Apply([]fleets.Fleet{{Name: "bad name!"}}); err == nil {
		t.Fatal("apply of an invalid fleet name succeeded")
	}
	if got := strings.Join(e.srv.Fleets(), ","); got != "game" {
		t.Errorf("after refused changes the scaler serves %s, want game", got)
	}
}
