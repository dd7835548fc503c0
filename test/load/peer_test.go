package load

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
	"github.com/wsgate/wsgate/tracker/accesslog"
)

// rigHeartbeat is the peer rig's tracker's --heartbeat: ten times the
// default's rate, so that a block's slots are free in Redis soon after its
// last release.
const rigHeartbeat = 200 * time.Millisecond

// BenchmarkPeerLifecycle puts a connection's whole lifecycle through wsgate
// beside what a per-request rate-limit decision costs on the same
// redis-server, interleaved in blocks so both see the same machine, with 1,
// 8 and 32 concurrent callers:
//
//   - wsgate: POST /v1/admit to a tracker, then the access-log entries Envoy
//     sends for the tunnel (established, then end), one per message as
//     envoy/envoy.yaml's buffer_size_bytes 0 has Envoy send them, over the
//     gRPC stream of one Envoy, until Redis counts the slot free again. The
//     tracker heartbeats in the background as in production: its share of
//     Redis' work is included.
//   - peer: one INCR + EXPIRE pipeline (a fixed-window rate-limit decision,
//     as envoyproxy/ratelimit makes it), no code of that project used.
//
// It reports Redis commands (INFO commandstats: a script's inner calls
// count) and Redis CPU (INFO cpu) per lifecycle and per decision, and their
// ratios, with script calls per lifecycle and the share of admissions that
// reused a slot (wsgate_tracker_reused_slots_total): the two that decide a
// lifecycle's cost. With -count, a summary line per mode follows all
// benchmarks: the median [min–max] over the runs. The goal of the performance issue: Redis CPU per lifecycle at most
// the peer's per decision.
//
// Each block of lifecycles ends when Redis counts every slot free, so the
// next begins with no connection that ended, none whose slot an admission
// could take back (PROTOCOL.md, "Reuse"): its first admissions, about one
// per caller, ask Redis, as in a fleet that starts from nothing. steady is
// 8 and 32 callers again in blocks ten times longer, nearer to a fleet
// under constant churn, where that start is paid once.
//
// open=200/s and open=1000/s are open loops (openLoop): lifecycles
// arriving at a fixed rate on the tracker, each holding its connection for
// a while, against decisions arriving at the same rate: the modest rate per
// tracker of a fleet whose churn is spread over many Envoys, where reuse
// and group commit have little to work with. open=200/s/steady is the
// first in blocks ten times longer, as steady is for the closed loops.
//
// redis-bound is the 32 callers again with redis-server held to a tenth of
// a core (a cgroup CPU quota), so that Redis, not this process, limits
// both rates: the regime where Redis' cost per lifecycle decides how far a
// fleet scales, and where the tracker's group commit (PROTOCOL.md,
// "Batches") has calls to share. It needs a writable cgroup v1 cpu
// controller (root), and is skipped without one.
func BenchmarkPeerLifecycle(b *testing.B) {
	p := newPeerRig(b)
	for _, callers := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) { p.run(b, callers, peerBlock) })
	}
	for _, callers := range []int{8, 32} {
		b.Run(fmt.Sprintf("callers=%d/steady", callers), func(b *testing.B) { p.run(b, callers, 10*peerBlock) })
	}
	for _, rate := range []int{200, 1000} {
		b.Run(fmt.Sprintf("open=%d/s", rate), func(b *testing.B) { p.openLoop(b, rate, 1) })
	}
	b.Run("open=200/s/steady", func(b *testing.B) { p.openLoop(b, 200, 10) })
	b.Run("callers=32/redis-bound", func(b *testing.B) {
		limitCPU(b, p.rdb, 1000, 10000)
		p.run(b, 32, peerBlock)
	})
}

// limitCPU holds the redis-server behind rdb to quota µs of CPU every
// period µs until the benchmark ends.
func limitCPU(b *testing.B, rdb *redis.Client, quota, period int) {
	const root = "/sys/fs/cgroup/cpu"
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		b.Fatal(err)
	}
	_, rest, _ := strings.Cut(info, "process_id:")
	pid := strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0])
	dir := filepath.Join(root, fmt.Sprintf("wsgate-bench-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		b.Skipf("no writable cgroup cpu controller to hold Redis to a CPU quota: %v", err)
	}
	write := func(file, v string) {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0o644); err != nil {
			b.Skipf("cgroup %s: %v", file, err)
		}
	}
	write("cpu.cfs_period_us", strconv.Itoa(period))
	write("cpu.cfs_quota_us", strconv.Itoa(quota))
	write("tasks", pid)
	b.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(root, "tasks"), []byte(pid), 0o644)
		_ = os.Remove(dir)
	})
}

// peerRig is one redis-server, a tracker on it with its admission API and
// access-log service, and one Envoy's access-log stream to it.
type peerRig struct {
	rdb    *redis.Client
	tr     *tracker.Tracker
	url    string
	client *http.Client
	mu     sync.Mutex // one stream, as one Envoy has; Send is not concurrent
	stream accesslogv3.AccessLogService_StreamAccessLogsClient
	first  bool
	// cron is Redis' own CPU seconds per second with no client (its
	// serverCron, at hz 10): neither side's cost, taken out of both in the
	// open loops, whose windows are long enough for it to count.
	cron float64
}

func newPeerRig(b *testing.B) *peerRig {
	srv := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 64})
	b.Cleanup(func() { rdb.Close() })
	ctx := context.Background()

	// Measured before the tracker exists: nothing else calls Redis.
	c0, t0 := redisCost(b, rdb), time.Now()
	time.Sleep(2 * time.Second) // a measured window, not a wait for an event
	cron := redisCost(b, rdb).sub(c0).cpu / time.Since(t0).Seconds()

	pods := make([]string, 100)
	for i := range pods {
		pods[i] = fmt.Sprintf("10.2.%d.%d:8080", i/250, i%250+1)
	}
	tr, err := tracker.New(tracker.Config{InstanceID: "peer", Heartbeat: rigHeartbeat, InstanceTTL: time.Second,
		Fleets: []fleets.Fleet{{Name: fleet, MaxConnectionsPerPod: 1 << 20, RatePerSecond: 1e9, Burst: 1e9, Pods: pods}}},
		store.NewStore(rdb, "wsgate"), tracker.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	await.Granting(b, "tracker peer", tr, time.Minute)
	hb, stopHB := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); tr.Run(hb) }()
	b.Cleanup(func() { stopHB(); <-hbDone })

	admitSrv := httptest.NewServer(tr.Handler(nil))
	b.Cleanup(admitSrv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	accesslog.New(tr, tr.Metrics().AccessLogEntries, quiet).Register(g)
	go func() { _ = g.Serve(ln) }()
	b.Cleanup(g.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	stream, err := accesslogv3.NewAccessLogServiceClient(cc).StreamAccessLogs(ctx)
	if err != nil {
		b.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Cleanup(client.CloseIdleConnections)
	return &peerRig{rdb: rdb, tr: tr, url: admitSrv.URL, client: client, stream: stream, first: true, cron: cron}
}

func (p *peerRig) send(b *testing.B, typ datav3.AccessLogType, conn, pod string) {
	md := &structpb.Struct{Fields: map[string]*structpb.Value{
		accesslog.ConnKey: structpb.NewStringValue(conn), accesslog.FleetKey: structpb.NewStringValue(fleet), accesslog.UpstreamKey: structpb.NewStringValue(pod)}}
	msg := &accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*datav3.HTTPAccessLogEntry{{
			CommonProperties: &datav3.AccessLogCommon{AccessLogType: typ,
				Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{accesslog.MetadataNamespace: md}}},
		}}}}}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.first {
		msg.Identifier = &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "peer"}, LogName: "wsgate"}
		p.first = false
	}
	if err := p.stream.Send(msg); err != nil {
		b.Error(err)
	}
}

// lifecycle is one connection: admitted, established, held for hold (the
// open loop's connections overlap, as a fleet's do), ended.
func (p *peerRig) lifecycle(b *testing.B, hold time.Duration) {
	resp, err := p.client.Post(p.url+"/v1/admit", "application/json",
		strings.NewReader(`{"fleet":"`+fleet+`","client":"203.0.113.7:5000","requestId":"peer"}`))
	if err != nil {
		b.Error(err)
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Errorf("admit: status %d", resp.StatusCode)
		return
	}
	conn, pod := resp.Header.Get(tracker.HeaderConn), resp.Header.Get(tracker.HeaderUpstream)
	p.send(b, datav3.AccessLogType_DownstreamTunnelSuccessfullyEstablished, conn, pod)
	if hold > 0 {
		time.Sleep(hold) // the connection's life: nothing to await
	}
	p.send(b, datav3.AccessLogType_DownstreamEnd, conn, pod)
}

// released waits until Redis counts no live connection: every release of
// the block ran. podsLive reads with ZSCAN, which no script uses: it is
// left out of the counts.
func (p *peerRig) released(b *testing.B) {
	k := p.tr.Store().Keys(fleet)
	deadline := time.Now().Add(time.Minute)
	for {
		live, err := podsLive(context.Background(), p.rdb, k)
		if err != nil {
			b.Fatal(err)
		}
		if live == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("releases not applied within a minute: live %d", live)
		}
		time.Sleep(time.Millisecond) // Redis has no event for a count
	}
}

// parallel runs n calls of op over callers goroutines.
func parallel(callers, n int, op func(i int)) {
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < n; i += callers {
				op(i)
			}
		}()
	}
	wg.Wait()
}

// peerBlock is how many lifecycles, then decisions, run back to back.
const peerBlock = 500

func (p *peerRig) run(b *testing.B, callers, block int) {
	ctx := context.Background()
	pipes := make([]redis.Pipeliner, callers)
	for i := range pipes {
		pipes[i] = p.rdb.Pipeline()
	}
	decision := func(i int) {
		pipe := pipes[i%callers]
		key := "ratelimit_peer_" + strconv.Itoa(i%64)
		pipe.Incr(ctx, key)
		pipe.Expire(ctx, key, time.Second)
		if _, err := pipe.Exec(ctx); err != nil {
			b.Error(err)
		}
	}
	var ws, peer redisStats
	var selfCPU float64
	var wsN, peerN int
	reuse := p.reuse()
	b.ResetTimer()
	for done := 0; done < b.N; done += block {
		n := min(block, b.N-done)
		r0 := redisCost(b, p.rdb)
		s0 := processCPU()
		parallel(callers, n, func(int) { p.lifecycle(b, 0) })
		p.released(b)
		selfCPU += processCPU() - s0
		r1 := redisCost(b, p.rdb)
		parallel(callers, n, decision)
		r2 := redisCost(b, p.rdb)
		ws, wsN = ws.add(r1.sub(r0)), wsN+n
		peer, peerN = peer.add(r2.sub(r1)), peerN+n
	}
	b.StopTimer()
	p.report(b, ws, wsN, peer, peerN, reuse)
	// This process holds the tracker and the load's clients (HTTP and
	// gRPC): an upper bound on the tracker's own CPU per lifecycle.
	peerRuns.metric(b, selfCPU/float64(wsN)*1e6, "process-cpu-µs/lifecycle")
}

// redisStats is what Redis counted so far, or between two reads.
type redisStats struct {
	cmds    float64 // every command, a script's inner calls included, but INFO and HSCAN (the benchmark's own)
	scripts float64 // script calls: EVAL, EVALSHA (and their _RO forms), FCALL
	cpu     float64 // CPU seconds, user + system
}

func (r redisStats) sub(o redisStats) redisStats {
	return redisStats{r.cmds - o.cmds, r.scripts - o.scripts, r.cpu - o.cpu}
}

func (r redisStats) add(o redisStats) redisStats {
	return redisStats{r.cmds + o.cmds, r.scripts + o.scripts, r.cpu + o.cpu}
}

// redisCost reads Redis' counts so far from INFO commandstats and INFO cpu.
func redisCost(b *testing.B, rdb *redis.Client) redisStats {
	b.Helper()
	info, err := rdb.Info(context.Background(), "commandstats", "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var r redisStats
	for _, line := range strings.Split(info, "\r\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(name, "cmdstat_"):
			if name == "cmdstat_info" || name == "cmdstat_hscan" {
				continue
			}
			for _, f := range strings.Split(rest, ",") {
				if v, ok := strings.CutPrefix(f, "calls="); ok {
					n, _ := strconv.ParseFloat(v, 64)
					r.cmds += n
					switch name {
					case "cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro", "cmdstat_fcall", "cmdstat_fcall_ro":
						r.scripts += n
					}
				}
			}
		case name == "used_cpu_sys" || name == "used_cpu_user":
			v, _ := strconv.ParseFloat(rest, 64)
			r.cpu += v
		}
	}
	return r
}
