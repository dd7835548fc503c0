package accesslog_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
	"github.com/wsgate/wsgate/tracker/accesslog"
)

const (
	fleet = "chat"
	inst  = "envoy-0"
)

type env struct {
	tr      *tracker.Tracker
	metrics *tracker.Metrics
	client  accesslogv3.AccessLogServiceClient
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvOn(t, redistest.Start(t).Client())
}

// newEnvOn starts a tracker and its receiver on rdb.
func newEnvOn(t *testing.T, rdb *redis.Client) *env {
	t.Helper()
	return newEnvWith(t, rdb, func(*accesslog.Server) {})
}

// newEnvWith is newEnvOn with the receiver's bounds set by opt.
func newEnvWith(t *testing.T, rdb *redis.Client, opt func(*accesslog.Server)) *env {
	t.Helper()
	m := tracker.NewMetrics(prometheus.NewRegistry())
	// A short instance TTL: a new epoch grants nothing for one of them
	// (the recovery wait), which awaitGranting waits out. A Redis timeout
	// a busy machine keeps (the default 100ms does not always): these
	// tests are about the access log, not about a slow Redis.
	tr, err := tracker.New(tracker.Config{InstanceID: inst, Heartbeat: 200 * time.Millisecond, InstanceTTL: time.Second, RedisTimeout: 2 * time.Second,
		Fleets: []fleets.Fleet{
			{Name: fleet, MaxConnectionsPerPod: 10, RatePerSecond: 1000, Burst: 1000, Pods: []string{"10.0.0.1:8080"}},
		}}, store.NewStore(rdb, "wsgate"), tracker.WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	await.Granting(t, "tracker", tr, 10*time.Second)
	srv := grpc.NewServer()
	rcv := accesslog.New(tr, tr.Metrics().AccessLogEntries, slog.New(slog.DiscardHandler))
	opt(rcv)
	rcv.Register(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.GracefulStop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &env{tr: tr, metrics: m, client: accesslogv3.NewAccessLogServiceClient(cc)}
}

func (e *env) admit(t *testing.T) string {
	t.Helper()
	res, err := e.tr.Admit(context.Background(), fleet)
	if err != nil || !res.Admitted {
		t.Fatalf("admit: %+v %v", res, err)
	}
	return res.Conn
}

func (e *env) open(t *testing.T, ctx context.Context) accesslogv3.AccessLogService_StreamAccessLogsClient {
	t.Helper()
	s, err := e.client.StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func send(t *testing.T, s accesslogv3.AccessLogService_StreamAccessLogsClient, entries ...*datav3.HTTPAccessLogEntry) {
	t.Helper()
	err := s.Send(&accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: inst}, LogName: "wsgate"},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}},
	})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
}

// entry is what Envoy's http_grpc logger sends, wsgate.conn in the dynamic
// metadata when conn is not empty.
func entry(typ datav3.AccessLogType, conn string) *datav3.HTTPAccessLogEntry {
	props := &datav3.AccessLogCommon{AccessLogType: typ, Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}}}
	if conn != "" {
		props.Metadata.FilterMetadata["wsgate"] = &structpb.Struct{Fields: map[string]*structpb.Value{"conn": structpb.NewStringValue(conn)}}
	}
	return &datav3.HTTPAccessLogEntry{CommonProperties: props, Response: &datav3.HTTPResponseProperties{}}
}

func (e *env) count(t *testing.T, typ, outcome string) float64 {
	t.Helper()
	var m dto.Metric
	if err := e.metrics.AccessLogEntries.WithLabelValues(typ, outcome).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func (e *env) redis(t *testing.T) (load int, established int) {
	t.Helper()
	snap, err := e.tr.Store().Snapshot(context.Background(), fleet, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range snap.Instances {
		if in.ID == inst {
			established = in.Established["10.0.0.1:8080"]
		}
	}
	return snap.Load["10.0.0.1:8080"], established
}

func TestEstablishRenewEndReleasesTheSlotInRedis(t *testing.T) {
	e := newEnv(t)
	conn := e.admit(t)
	if load, _ := e.redis(t); load != 1 {
		t.Fatalf("load after admission %d, want 1", load)
	}
	s := e.open(t, context.Background())
	send(t, s, entry(datav3.AccessLogType_DownstreamTunnelSuccessfullyEstablished, conn))
	send(t, s, entry(datav3.AccessLogType_DownstreamPeriodic, conn))
	await.True(t, "establish and renew applied", 30*time.Second, func() bool {
		return e.count(t, "established", "ok") == 1 && e.count(t, "periodic", "ok") == 1
	})
	if err := e.tr.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if load, est := e.redis(t); load != 1 || est != 1 {
		t.Fatalf("after establish: load %d, established %d; want 1, 1", load, est)
	}

	send(t, s, entry(datav3.AccessLogType_DownstreamEnd, conn))
	await.True(t, "slot released in Redis", 30*time.Second, func() bool { load, _ := e.redis(t); return load == 0 })
	if e.count(t, "end", "ok") != 1 {
		t.Errorf("end entries ok = %v, want 1", e.count(t, "end", "ok"))
	}
	if n, _ := e.tr.LocalCounts(fleet); len(n) != 0 {
		t.Errorf("tracker still counts %v", n)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
}

// TestRestartedTrackerAdoptsItsConnections: entries naming connections a
// previous run of this tracker admitted take them over (or release them).
func TestRestartedTrackerAdoptsItsConnections(t *testing.T) {
	rdb := redistest.Start(t).Client()
	first := newEnvOn(t, rdb)
	a, b := first.admit(t), first.admit(t)
	if err := first.tr.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := newEnvOn(t, rdb) // same instance id: the tracker restarted
	if load, _ := second.redis(t); load != 2 {
		t.Fatalf("after the restart Redis counts %d, want the 2 inherited", load)
	}
	withPod := func(e *datav3.HTTPAccessLogEntry) *datav3.HTTPAccessLogEntry {
		f := e.CommonProperties.Metadata.FilterMetadata["wsgate"].Fields
		f["fleet"], f["upstream"] = structpb.NewStringValue(fleet), structpb.NewStringValue("10.0.0.1:8080")
		return e
	}
	s := second.open(t, context.Background())
	send(t, s, withPod(entry(datav3.AccessLogType_DownstreamPeriodic, a)), withPod(entry(datav3.AccessLogType_DownstreamEnd, b)),
		entry(datav3.AccessLogType_DownstreamPeriodic, "gone"))
	await.True(t, "entries applied", 30*time.Second, func() bool {
		return second.count(t, "periodic", "adopted") == 1 && second.count(t, "end", "adopted") == 1 && second.count(t, "periodic", "unknown_conn") == 1
	})
	if err := second.tr.Renew(a); err != nil {
		t.Errorf("adopted connection is not tracked: %v", err)
	}
	if err := second.tr.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if load, _ := second.redis(t); load != 1 {
		t.Errorf("after adopting one and ending one Redis counts %d, want 1", load)
	}
}

func TestEndWithoutEstablishmentReleases(t *testing.T) {
	e := newEnv(t)
	conn := e.admit(t)
	s := e.open(t, context.Background())
	send(t, s, entry(datav3.AccessLogType_DownstreamEnd, conn)) // the backend refused the upgrade
	await.True(t, "slot released", 30*time.Second, func() bool { load, _ := e.redis(t); return load == 0 })
}

func TestGarbageIsCountedAndIgnored(t *testing.T) {
	e := newEnv(t)
	conn := e.admit(t)
	s := e.open(t, context.Background())
	send(t, s,
		&datav3.HTTPAccessLogEntry{}, // no common properties
		nil,
		entry(datav3.AccessLogType_NotSet, conn),
		entry(datav3.AccessLogType_DownstreamEnd, ""),
		entry(datav3.AccessLogType_DownstreamPeriodic, "no-such-conn"),
		entry(datav3.AccessLogType_UpstreamPeriodic, conn),
	)
	if err := s.Send(&accesslogv3.StreamAccessLogsMessage{}); err != nil { // no entries at all
		t.Fatal(err)
	}
	if err := s.Send(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_TcpLogs{
		TcpLogs: &accesslogv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: []*datav3.TCPAccessLogEntry{{}, {}}},
	}}); err != nil {
		t.Fatal(err)
	}
	// The stream survives the garbage: a good entry after it still works.
	send(t, s, entry(datav3.AccessLogType_DownstreamEnd, conn))
	await.True(t, "the good entry after the garbage", 30*time.Second, func() bool { return e.count(t, "end", "ok") == 1 })

	want := map[[2]string]float64{
		{"unknown", "malformed"}:     3,
		{"end", "no_conn"}:           1,
		{"periodic", "unknown_conn"}: 1,
		{"other", "ignored"}:         1,
		{"tcp", "ignored"}:           2,
	}
	for k, n := range want {
		if got := e.count(t, k[0], k[1]); got != n {
			t.Errorf("entries{type=%s,outcome=%s} = %v, want %v", k[0], k[1], got, n)
		}
	}
	// The end's release is queued (it may wait for an admission to reuse
	// its slot); Flush sends it.
	if err := e.tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if load, _ := e.redis(t); load != 0 {
		t.Errorf("load %d after the end entry, want 0", load)
	}
}

func TestStreamCutLosesNothingReceivedAndTheNextResumes(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.admit(t), e.admit(t), e.admit(t)
	ctx, cut := context.WithCancel(context.Background())
	s := e.open(t, ctx)
	send(t, s, entry(datav3.AccessLogType_DownstreamTunnelSuccessfullyEstablished, a),
		entry(datav3.AccessLogType_DownstreamTunnelSuccessfullyEstablished, b))
	send(t, s, entry(datav3.AccessLogType_DownstreamEnd, b))
	await.True(t, "entries received", 30*time.Second, func() bool { return e.count(t, "established", "ok") == 2 && e.count(t, "end", "ok") == 1 })
	cut() // Envoy's connection drops mid-stream, no CloseSend

	// What was received stays applied: b released, a established.
	if err := e.tr.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if load, est := e.redis(t); load != 2 || est != 1 {
		t.Fatalf("after the cut: load %d, established %d; want 2 (a, c) and 1 (a)", load, est)
	}
	if e.tr.Degraded(fleet) {
		t.Fatal("a cut stream put the tracker in fallback")
	}

	s2 := e.open(t, context.Background())
	send(t, s2, entry(datav3.AccessLogType_DownstreamEnd, a), entry(datav3.AccessLogType_DownstreamEnd, c))
	await.True(t, "the next stream's releases", 30*time.Second, func() bool { load, _ := e.redis(t); return load == 0 })
}

// withPod adds the fleet and upstream Envoy's metadata carries.
func withPod(e *datav3.HTTPAccessLogEntry, pod string) *datav3.HTTPAccessLogEntry {
	f := e.CommonProperties.Metadata.FilterMetadata["wsgate"].Fields
	f["fleet"], f["upstream"] = structpb.NewStringValue(fleet), structpb.NewStringValue(pod)
	return e
}

// TestForgedEntriesAreRefused: entries naming ids this instance never
// issued, or pods outside the fleet, change nothing in Redis.
func TestForgedEntriesAreRefused(t *testing.T) {
	e := newEnv(t)
	real := e.admit(t) // a real id, to forge others of its shape
	s := e.open(t, context.Background())
	var forged []*datav3.HTTPAccessLogEntry
	for i := range 50 {
		forged = append(forged, withPod(entry(datav3.AccessLogType_DownstreamPeriodic, fmt.Sprintf("forged-%d", i)), "10.0.0.1:8080"))
	}
	beyond := real[:len(real)-1] + "zz" // this process's prefix, a counter it never reached
	send(t, s, append(forged,
		withPod(entry(datav3.AccessLogType_DownstreamPeriodic, beyond), "10.0.0.1:8080"),
		withPod(entry(datav3.AccessLogType_DownstreamTunnelSuccessfullyEstablished, real+"0"), "10.255.0.1:9"),
	)...)
	await.True(t, "forged entries refused", 30*time.Second, func() bool {
		return e.count(t, "periodic", "refused") == 51 && e.count(t, "established", "refused") == 1
	})
	// A real id released (lost renewals) and reported on a pod outside the
	// registry is refused too; on the fleet's pod it is adopted again.
	if err := e.tr.Release(context.Background(), real); err != nil {
		t.Fatal(err)
	}
	send(t, s, withPod(entry(datav3.AccessLogType_DownstreamPeriodic, real), "10.255.0.1:9"))
	await.True(t, "a real id on a foreign pod refused", 30*time.Second, func() bool { return e.count(t, "periodic", "refused") == 52 })
	send(t, s, withPod(entry(datav3.AccessLogType_DownstreamPeriodic, real), "10.0.0.1:8080"))
	await.True(t, "a real id re-adopted", 30*time.Second, func() bool { return e.count(t, "periodic", "adopted") == 1 })
	if err := e.tr.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	snap, err := e.tr.Store().Snapshot(context.Background(), fleet, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if snap.Load["10.0.0.1:8080"] != 1 || len(snap.Load) != 1 {
		t.Errorf("Redis counts %v, want only the one real connection on 10.0.0.1:8080", snap.Load)
	}
}

// TestRestartAdoptsEveryConnectionItsEnvoyNames (issue 26): a restarted
// tracker takes over every id of its predecessor's that the access log
// names on a pod of the fleet, also beyond the count Redis held for it
// (here a third one: Redis may have lost it, or reaped the instance),
// since its Envoy carries them; ids of another instance, and pods outside
// the fleet, stay refused.
func TestRestartAdoptsEveryConnectionItsEnvoyNames(t *testing.T) {
	rdb := redistest.Start(t).Client()
	first := newEnvOn(t, rdb)
	a, b := first.admit(t), first.admit(t)
	if err := first.tr.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := newEnvOn(t, rdb)
	third := a[:len(a)-1] + "zz" // the predecessor's format, beyond what Redis held
	foreign := "0000000" + a[7:] // another instance's tag
	s := second.open(t, context.Background())
	send(t, s, withPod(entry(datav3.AccessLogType_DownstreamPeriodic, a), "10.0.0.1:8080"),
		withPod(entry(datav3.AccessLogType_DownstreamPeriodic, b), "10.0.0.1:8080"),
		withPod(entry(datav3.AccessLogType_DownstreamPeriodic, third), "10.0.0.1:8080"),
		withPod(entry(datav3.AccessLogType_DownstreamPeriodic, foreign), "10.0.0.1:8080"),
		withPod(entry(datav3.AccessLogType_DownstreamPeriodic, third+"1"), "10.255.0.1:9"))
	await.True(t, "entries applied", 30*time.Second, func() bool {
		return second.count(t, "periodic", "adopted") == 3 && second.count(t, "periodic", "refused") == 2
	})
	if err := second.tr.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if load, est := second.redis(t); load != 3 || est != 3 {
		t.Errorf("Redis counts %d (%d established), want the 3 Envoy carries", load, est)
	}
}

// TestStreamsAreBounded: past MaxStreams a stream is refused.
func TestStreamsAreBounded(t *testing.T) {
	e := newEnvWith(t, redistest.Start(t).Client(), func(s *accesslog.Server) { s.MaxStreams = 2 })
	ctx := context.Background()
	a, b := e.open(t, ctx), e.open(t, ctx)
	send(t, a, entry(datav3.AccessLogType_DownstreamPeriodic, "x"))
	send(t, b, entry(datav3.AccessLogType_DownstreamPeriodic, "y"))
	await.True(t, "both streams served", 30*time.Second, func() bool { return e.count(t, "periodic", "unknown_conn") == 2 })
	if _, err := e.open(t, ctx).CloseAndRecv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third stream: %v, want ResourceExhausted", err)
	}
	if _, err := a.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	// a's place is free again.
	await.True(t, "a stream accepted again", 30*time.Second, func() bool {
		s := e.open(t, ctx)
		send(t, s, entry(datav3.AccessLogType_DownstreamPeriodic, "z"))
		_, err := s.CloseAndRecv()
		return err == nil
	})
}

// TestIdleStreamIsClosed: a stream that sends nothing for IdleTimeout is
// ended by the receiver and frees its place.
func TestIdleStreamIsClosed(t *testing.T) {
	const idle = 200 * time.Millisecond // the test is about this timeout
	e := newEnvWith(t, redistest.Start(t).Client(), func(s *accesslog.Server) { s.MaxStreams, s.IdleTimeout = 1, idle })
	start := time.Now()
	s := e.open(t, context.Background()) // abandoned: never sends
	err := s.RecvMsg(new(accesslogv3.StreamAccessLogsResponse))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("idle stream ended with %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d < idle {
		t.Errorf("closed after %s, before the idle timeout %s", d, idle)
	}
	next := e.open(t, context.Background())
	send(t, next, entry(datav3.AccessLogType_DownstreamPeriodic, "z"))
	if _, err := next.CloseAndRecv(); err != nil {
		t.Fatalf("the next stream: %v", err)
	}
}

// TestEntrySeriesExistBeforeAnyEntry: every series the receiver counts is
// at 0 from its start, so that a rule or dashboard on entries tells "no
// entry yet" from "no tracker scraped".
func TestEntrySeriesExistBeforeAnyEntry(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := tracker.NewMetrics(reg)
	accesslog.New(nil, m.AccessLogEntries, slog.New(slog.DiscardHandler))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "wsgate_tracker_access_log_entries_total" {
			continue
		}
		for _, mt := range f.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			got[l["type"]+" "+l["outcome"]] = mt.GetCounter().GetValue()
		}
	}
	var want []string
	for _, typ := range []string{"established", "periodic", "end"} {
		for _, o := range []string{accesslog.OutcomeOK, accesslog.OutcomeAdopted, accesslog.OutcomeRefused, accesslog.OutcomeUnknownConn, accesslog.OutcomeNoConn, accesslog.OutcomeError} {
			want = append(want, typ+" "+o)
		}
	}
	want = append(want, "unknown "+accesslog.OutcomeMalformed, "other "+accesslog.OutcomeIgnored, "tcp "+accesslog.OutcomeIgnored)
	for _, w := range want {
		if v, ok := got[w]; !ok || v != 0 {
			t.Errorf("before any entry: type, outcome %s = %v (present %v), want 0", w, v, ok)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d series before any entry, want %d: %v", len(got), len(want), got)
	}
}
