// Package faults checks wsgate's cap through real processes (issue 10,
// tracker/PROTOCOL.md): a real redis-server, `wsgate tracker` processes
// built from this module, each with its own gateway (the Envoy stand-in
// running the real envoy/wsgate.lua) proxying real WebSockets to backends
// that count their own connections, and per tracker a TCP proxy in front
// of Redis that can delay one request or reply, black-hole or drop the
// tracker's Redis traffic. Every test asserts on what the backends held
// (wsbackend's Max), not only on what the clients were told. Where a test
// asks what KEDA asks, a `wsgate scaler` process runs beside them
// (options.settle). This is the one fault-test tree: the outages that
// test/e2e tested in process (outages_test.go) run here too.
//
// The binary is built once per run (TestMain); WSGATE_FAULTS_BIN runs the
// tests against one built elsewhere instead (an older revision, to show
// the tests catch its breaches). TestChaos prints its seed;
// WSGATE_CHAOS_SEED replays it. Each test logs what its fault cost in one
// line ("cost: fault=... rejected=... recovery=..."), for the README; the
// Sentinel failover and split-brain tests (sentinel_test.go,
// splitbrain_test.go) log "figures: ..." lines, and those that document a
// known breach of the cap run only with WSGATE_FAULTS_UNSAFE=1.
package faults

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/wsgate/wsgate/envoy/gateway"
	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/test/wsbackend"
	"github.com/wsgate/wsgate/test/wsdial"
	"github.com/wsgate/wsgate/test/wsgatebin"
)

// wsgateBin is the tracker binary under test; trackerHelp its `tracker -h`.
var (
	wsgateBin   string
	trackerHelp string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// The tests spend their time waiting for heartbeats, leases and
	// recovery waits, with idle processes: run them all at once unless
	// -test.parallel was given (its default, GOMAXPROCS, would queue them
	// for minutes on a 2-core machine).
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", "16")
	}
	if bin := os.Getenv("WSGATE_FAULTS_BIN"); bin != "" {
		wsgateBin = bin
	} else {
		var err error
		if wsgateBin, err = wsgatebin.Build(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer wsgatebin.Remove()
	}
	out, _ := exec.Command(wsgateBin, "tracker", "-h").CombinedOutput()
	trackerHelp = string(out)
	return m.Run()
}

// trackerHasFlag reports whether the binary under test knows --name.
func trackerHasFlag(name string) bool {
	return strings.Contains(trackerHelp, "  -"+name+" ") || strings.Contains(trackerHelp, "  -"+name+"\n")
}

// fleet is the one fleet every test uses.
const fleet = "chat"

// keys names the Redis keys the tests read. They are the scripts' names
// (store/scripts/*.lua, with the Store's "{<prefix>:<fleet>}:" prefix);
// keep every one of them here, so a renaming is adjusted in one place.
var keys = struct {
	instances, load, avail string
	// admitMarker is a key only the admit script is called with and
	// instancesMarker one the heartbeat (sync) is called with: the proxy
	// recognises the two calls by them, in EVALSHA as in EVAL.
	admitMarker, instancesMarker string
	// layoutMarker: the layout check (store.Store.Layout) reads group 0's
	// epoch and instances too, before each heartbeat: not a heartbeat.
	layoutMarker string
}{
	instances:       store.FleetKeys("", fleet).Instances(),
	load:            store.FleetKeys("", fleet).Load(),
	avail:           store.FleetKeys("", fleet).Avail(),
	admitMarker:     store.FleetKeys("", fleet).Rej(store.ReasonNoPods),
	instancesMarker: store.FleetKeys("", fleet).Instances(),
	layoutMarker:    store.FleetKeys("", fleet).Layout(),
}

// isAdmit reports whether a request to Redis is the admit script's call.
func isAdmit(req []byte) bool {
	return isScript(req) && bytes.Contains(req, []byte(keys.admitMarker))
}

// isHeartbeat reports whether a request to Redis is the sync script's call
// (the heartbeat): a script on the instances key that is not admit.
func isHeartbeat(req []byte) bool {
	return isScript(req) && bytes.Contains(req, []byte(keys.instancesMarker)) && !bytes.Contains(req, []byte(keys.admitMarker)) &&
		!bytes.Contains(req, []byte(keys.layoutMarker))
}

func isScript(req []byte) bool {
	l := bytes.ToLower(req)
	return bytes.Contains(l, []byte("\r\nevalsha\r\n")) || bytes.Contains(l, []byte("\r\neval\r\n"))
}

var quiet = slog.New(slog.DiscardHandler)

// options shape one harness.
type options struct {
	backends int // default 1
	cap      int // default 2
	// trackers, one per instance id; default A and B.
	trackers []trackerOptions
	// redisArgs are extra redis-server options (persistence).
	redisArgs []string
	// Tracker flags common to all (defaults: heartbeat 1s, instance TTL
	// 5s, Redis timeout 200ms).
	heartbeat, instanceTTL, redisTimeout time.Duration
	// expired is --expired-instances ("" leaves the flag out).
	expired string
	// admitTimeout is the gateways' admit_timeout_ms (0: the filter's
	// default).
	admitTimeout time.Duration
	// lease is --lease-ttl (default 5s); --establish-timeout is 3s, or the
	// lease when that is shorter.
	lease time.Duration
	// flush is the gateways' access-log flush interval (default 500ms).
	flush time.Duration
	// accessLogProxy puts a proxy (tp.alProxy) between each gateway and
	// its tracker's access-log receiver, so a test can cut the stream.
	accessLogProxy bool
	// settle, when set, starts a `wsgate scaler` process with this
	// --settle; h.keda asks it what KEDA asks.
	settle time.Duration
	// redis, when set, is the Redis the test started itself (a primary
	// with replicas): the trackers' proxies lead to it, and rdb (which
	// must then be set too) is what the harness reads the counts with (a
	// Sentinel client follows a failover).
	redis *redistest.Server
	rdb   *redis.Client
	// shards, when above 1, is the fleet's shards, and backends then
	// counts per group: backends are started until each group has that
	// many (a pod's group is a hash of its address), the others closed.
	shards int
}

type trackerOptions struct {
	id        string
	heartbeat time.Duration // 0: options.heartbeat
	// args are tracker flags after the harness' own: a flag given twice
	// takes the later value (--redis-addr of Sentinels instead of the
	// proxy).
	args []string
}

// harness is one system on loopback: Redis, trackers with their gateways
// and Redis proxies, backends.
type harness struct {
	t        *testing.T
	o        options
	redis    *redistest.Server
	rdb      *redis.Client
	backends []*wsbackend.Backend
	trackers []*trackerProc
	config   string
	stats    *stats
	scaler   *trackerProc // the scaler process (options.settle), or nil
	keda     externalscaler.ExternalScalerClient
}

func newHarness(t *testing.T, o options) *harness {
	t.Helper()
	if o.backends == 0 {
		o.backends = 1
	}
	if o.cap == 0 {
		o.cap = 2
	}
	if len(o.trackers) == 0 {
		o.trackers = []trackerOptions{{id: "A"}, {id: "B"}}
	}
	if o.heartbeat == 0 {
		o.heartbeat = time.Second
	}
	if o.instanceTTL == 0 {
		o.instanceTTL = 5 * time.Second
	}
	if o.redisTimeout == 0 {
		o.redisTimeout = 200 * time.Millisecond
	}
	if o.lease == 0 {
		o.lease = 5 * time.Second
	}
	if o.flush == 0 {
		o.flush = 500 * time.Millisecond
	}
	h := &harness{t: t, o: o, stats: newStats()}
	if o.redis != nil {
		h.redis, h.rdb = o.redis, o.rdb
	} else {
		h.redis = redistest.StartPort(t, freePort(t), o.redisArgs...)
		h.rdb = redis.NewClient(&redis.Options{Addr: h.redis.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	}
	var pods []string
	perGroup := map[int]int{}
	for len(pods) < o.backends*max(o.shards, 1) {
		b, err := wsbackend.Start()
		if err != nil {
			t.Fatal(err)
		}
		if g := fleets.GroupOf(b.Addr, o.shards); perGroup[g] == o.backends {
			b.Close()
			continue
		}
		perGroup[fleets.GroupOf(b.Addr, o.shards)]++
		h.backends = append(h.backends, b)
		pods = append(pods, b.Addr)
	}
	h.config = filepath.Join(t.TempDir(), "fleets.yaml")
	fy := fleetYAML(fleet, o.cap, pods...)
	if o.shards > 1 {
		fy += fmt.Sprintf("    shards: %d\n", o.shards)
	}
	h.writeFleets(fy)
	// One cleanup, in the order that lets everything end quickly: frozen
	// processes thawed, gateways closed while their trackers still listen
	// (their last access-log entries delivered), trackers killed, then the
	// backends (Redis is killed by its own cleanup, registered before).
	t.Cleanup(func() {
		if t.Failed() {
			h.dumpLogs()
		}
		for _, tp := range h.trackers {
			tp.signal(syscall.SIGCONT)
			tp.proxy.heal()
		}
		var wg sync.WaitGroup
		for _, tp := range h.trackers {
			wg.Add(1)
			go func() { defer wg.Done(); tp.closeGateway() }()
		}
		wg.Wait()
		for _, tp := range h.trackers {
			tp.kill()
			tp.proxy.close()
			if tp.alProxy != nil {
				tp.alProxy.close()
			}
		}
		if h.scaler != nil {
			h.scaler.kill()
		}
		for _, b := range h.backends {
			b.Close()
		}
		h.rdb.Close()
	})
	for _, to := range o.trackers {
		h.trackers = append(h.trackers, h.startTracker(to))
	}
	if o.settle != 0 {
		h.startScaler()
	}
	return h
}

// startScaler runs `wsgate scaler` on the harness' Redis and fleets file
// and connects h.keda to it.
func (h *harness) startScaler() {
	h.t.Helper()
	sc := &trackerProc{h: h, id: "scaler", listen: freeAddr(h.t), telem: freeAddr(h.t), logPath: filepath.Join(h.t.TempDir(), "scaler.log")}
	sc.args = []string{"scaler",
		"--redis-addr", h.redis.Addr(), "--redis-dial-timeout", "1s",
		"--config", h.config, "--settle", h.o.settle.String(),
		"--instance-ttl", h.o.instanceTTL.String(),
		"--listen", sc.listen, "--telemetry-listen", sc.telem,
		"--log-level", "info",
	}
	if h.o.expired != "" {
		sc.args = append(sc.args, "--expired-instances", h.o.expired)
	}
	h.scaler = sc
	sc.start()
	cc, err := grpc.NewClient(sc.listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cc.Close() })
	h.keda = externalscaler.NewExternalScalerClient(cc)
}

// configCheck is the trackers' --config-check-interval.
const configCheck = 100 * time.Millisecond

// fleetYAML is one fleet of the fleets file, placing by pack with a rate
// no test reaches.
func fleetYAML(name string, cap int, pods ...string) string {
	quoted := make([]string, len(pods))
	for i, p := range pods {
		quoted[i] = strconv.Quote(p)
	}
	return fmt.Sprintf("  - name: %s\n    maxConnectionsPerPod: %d\n    ratePerSecond: 10000\n    burst: 10000\n    policy: pack\n    retryAfter: 1s\n    pods: [%s]\n",
		name, cap, strings.Join(quoted, ", "))
}

// writeFleets replaces the trackers' fleets file with these fleets, in
// one rename as an editor or the kubelet does: a reader never sees half.
func (h *harness) writeFleets(fleets ...string) {
	h.t.Helper()
	tmp := h.config + ".tmp"
	if err := os.WriteFile(tmp, []byte("fleets:\n"+strings.Join(fleets, "")), 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Rename(tmp, h.config); err != nil {
		h.t.Fatal(err)
	}
}

// tracker returns the tracker with instance id.
func (h *harness) tracker(id string) *trackerProc {
	for _, tp := range h.trackers {
		if tp.id == id {
			return tp
		}
	}
	h.t.Fatalf("no tracker %q", id)
	return nil
}

// trackerProc is one `wsgate tracker` process, its Redis proxy and its
// gateway (in the test process); h.scaler is one too, a `wsgate scaler`
// with neither.
type trackerProc struct {
	h       *harness
	id      string
	args    []string
	proxy   *redisProxy
	alProxy *redisProxy // between gateway and access-log receiver (options.accessLogProxy)
	listen  string      // admission API (the scaler's gRPC)
	alAddr  string      // access-log receiver
	telem   string      // /metrics, /healthz, /readyz
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	logf   *os.File

	gw    *gateway.Gateway
	gwURL string // ws://gateway/
	// The gateway's admin API (Envoy's), and the tracker's /shutdown.
	adminAddr, shutAddr string
	admin               *http.Server
}

func (h *harness) startTracker(to trackerOptions) *trackerProc {
	h.t.Helper()
	hb := to.heartbeat
	if hb == 0 {
		hb = h.o.heartbeat
	}
	tp := &trackerProc{h: h, id: to.id, proxy: startRedisProxy(h.t, h.redis.Addr())}
	tp.listen = freeAddr(h.t)
	tp.alAddr = freeAddr(h.t)
	tp.telem = freeAddr(h.t)
	tp.logPath = filepath.Join(h.t.TempDir(), "tracker-"+to.id+".log")
	tp.args = []string{"tracker",
		"--redis-addr", tp.proxy.addr(), "--redis-dial-timeout", "1s",
		"--config", h.config, "--instance-id", to.id,
		"--heartbeat", hb.String(), "--instance-ttl", h.o.instanceTTL.String(),
		"--redis-timeout", h.o.redisTimeout.String(),
		"--establish-timeout", min(3*time.Second, h.o.lease).String(), "--lease-ttl", h.o.lease.String(),
		"--fallback", "share",
		"--listen", tp.listen, "--access-log-listen", tp.alAddr, "--telemetry-listen", tp.telem,
		"--log-level", "info",
	}
	if h.o.expired != "" {
		tp.args = append(tp.args, "--expired-instances", h.o.expired)
	}
	if trackerHasFlag("config-check-interval") {
		tp.args = append(tp.args, "--config-check-interval", configCheck.String())
	}
	tp.adminAddr, tp.shutAddr = freeAddr(h.t), freeAddr(h.t)
	if trackerHasFlag("shutdown-listen") {
		tp.args = append(tp.args, "--envoy-admin", tp.adminAddr, "--shutdown-listen", tp.shutAddr, "--shutdown-timeout", "60s")
	}
	tp.args = append(tp.args, to.args...)
	tp.start()
	alAddr := tp.alAddr
	if h.o.accessLogProxy {
		tp.alProxy = startRedisProxy(h.t, tp.alAddr)
		alAddr = tp.alProxy.addr()
	}
	gw, err := gateway.New(gateway.Config{TrackerURL: "http://" + tp.listen, AccessLogAddr: alAddr, Fleet: fleet, NodeID: "envoy-" + to.id, FlushInterval: h.o.flush, AdmitTimeout: h.o.admitTimeout, Logger: quiet})
	if err != nil {
		h.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	tp.gw, tp.gwURL = gw, "ws://"+ln.Addr().String()+"/"
	go func() { _ = gw.Serve(ln) }()
	aln, err := net.Listen("tcp", tp.adminAddr)
	if err != nil {
		h.t.Fatal(err)
	}
	tp.admin = &http.Server{Handler: gw.AdminHandler()}
	go func() { _ = tp.admin.Serve(aln) }()
	return tp
}

// start runs the process and waits until it serves /healthz.
func (tp *trackerProc) start() {
	t := tp.h.t
	t.Helper()
	logf, err := os.OpenFile(tp.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(wsgateBin, tp.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start tracker %s: %v", tp.id, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	tp.mu.Lock()
	tp.cmd, tp.exited, tp.logf = cmd, exited, logf
	tp.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("tracker %s exited at start:\n%s", tp.id, tp.logTail(40))
		default:
		}
		if resp, err := http.Get("http://" + tp.telem + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tracker %s not serving /healthz within 15s:\n%s", tp.id, tp.logTail(40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill is SIGKILL: the tracker ends at once, its gateway keeps its
// connections.
func (tp *trackerProc) kill() {
	tp.mu.Lock()
	cmd, exited, logf := tp.cmd, tp.exited, tp.logf
	tp.cmd = nil
	tp.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	logf.Close()
}

func (tp *trackerProc) running() bool {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.cmd != nil
}

// stop is SIGSTOP, cont SIGCONT.
func (tp *trackerProc) stop() { tp.signal(syscall.SIGSTOP) }
func (tp *trackerProc) cont() { tp.signal(syscall.SIGCONT) }

func (tp *trackerProc) signal(sig syscall.Signal) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.cmd != nil {
		_ = tp.cmd.Process.Signal(sig)
	}
}

// closeGateway is Envoy gone: its tunnels end, its admin port closes.
func (tp *trackerProc) closeGateway() {
	if tp.gw != nil {
		_ = tp.gw.Close()
	}
	if tp.admin != nil {
		_ = tp.admin.Close()
	}
}

func (tp *trackerProc) logTail(n int) string { return redistest.Tail(tp.logPath, n) }

func (h *harness) dumpLogs() {
	for _, tp := range h.trackers {
		h.t.Logf("tracker %s log (last lines):\n%s", tp.id, tp.logTail(60))
	}
	if h.scaler != nil {
		h.t.Logf("scaler log (last lines):\n%s", h.scaler.logTail(60))
	}
}

// Ports are handed out below the kernel's ephemeral range (32768 and up
// by default), never twice in a run: processes restart on their ports,
// and a port the kernel may give any outgoing connection meanwhile, or
// another test's listener, would make that restart fail.
var ports struct {
	mu   sync.Mutex
	used map[int]bool
}

// freePort reserves a loopback port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if ports.used == nil {
		ports.used = map[int]bool{}
	}
	for range 1000 {
		p := 20000 + rand.IntN(12000)
		if ports.used[p] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		ports.used[p] = true
		return p
	}
	t.Fatal("no free port in 20000-31999")
	return 0
}

// freeAddr is "127.0.0.1:<freePort>".
func freeAddr(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
}

// stats counts the outcomes the clients saw: rejections by the reason the
// gateway returned (X-Wsgate-Reason), admissions.
type stats struct {
	mu       sync.Mutex
	rejected map[string]int
	admitted int
}

func newStats() *stats { return &stats{rejected: map[string]int{}} }

func (s *stats) add(r wsdial.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Conn != nil {
		s.admitted++
		return
	}
	s.rejected[r.Outcome()]++
}

func (s *stats) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.rejected)
	s.admitted = 0
}

// take returns String and resets the counts.
func (s *stats) take() string {
	out := s.String()
	s.reset()
	return out
}

// String lists the rejections as reason:count,... sorted by reason.
func (s *stats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k, n := range s.rejected {
		out = append(out, fmt.Sprintf("%s:%d", k, n))
	}
	if len(out) == 0 {
		return "none"
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// dial opens a WebSocket through tp's gateway and records the outcome.
func (h *harness) dial(tp *trackerProc) wsdial.Result {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := wsdial.Dial(ctx, tp.gwURL, nil)
	h.stats.add(r)
	return r
}

// conns are client connections a test holds open.
type conns struct {
	mu sync.Mutex
	cs []*websocket.Conn
}

func (c *conns) add(r wsdial.Result) bool {
	if r.Conn == nil {
		return false
	}
	c.mu.Lock()
	c.cs = append(c.cs, r.Conn)
	c.mu.Unlock()
	return true
}

func (c *conns) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cs)
}

func (c *conns) closeAll() {
	c.mu.Lock()
	cs := c.cs
	c.cs = nil
	c.mu.Unlock()
	for _, x := range cs {
		x.CloseNow()
	}
}

// hold dials n times through tp and keeps what was admitted; it returns
// how many were.
func (h *harness) hold(held *conns, tp *trackerProc, n int) int {
	got := 0
	for range n {
		if held.add(h.dial(tp)) {
			got++
		}
	}
	return got
}

// holdAll is hold for a test's setup, before its fault: a dial refused
// for a reason a busy machine causes by itself (a Redis call or the
// filter's call to the tracker past its timeout: redis_down,
// tracker_unavailable) is tried again, for up to 20 s; any other refusal
// (capacity) ends it. It returns how many it holds.
func (h *harness) holdAll(held *conns, tp *trackerProc, n int) int {
	got := 0
	deadline := time.Now().Add(20 * time.Second)
	for got < n {
		r := h.dial(tp)
		if held.add(r) {
			got++
			continue
		}
		if transient := r.Reason == "redis_down" || r.Reason == "tracker_unavailable"; !transient || time.Now().After(deadline) {
			break
		}
		// The tracker leaves its fallback at its next heartbeat.
		h.t.Logf("setup: a dial through %s refused %s (a busy machine): dialing again after its next heartbeat", tp.id, r.Reason)
		h.nextHeartbeat(tp, 10*h.o.heartbeat)
	}
	return got
}

func rctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Second)
}

// score is the instance's lease in the instances sorted set (-1: absent or
// Redis does not answer). Every heartbeat sets it anew.
func (h *harness) score(id string) float64 {
	ctx, cancel := rctx()
	defer cancel()
	v, err := h.rdb.ZScore(ctx, keys.instances, id).Result()
	if err != nil {
		return -1
	}
	return v
}

// nextHeartbeat waits for tp's next heartbeat to reach Redis (its lease
// score changes) and returns when it was seen.
func (h *harness) nextHeartbeat(tp *trackerProc, d time.Duration) time.Time {
	h.t.Helper()
	s0 := h.score(tp.id)
	await.Until(h.t, "heartbeat of "+tp.id, d, func() (bool, string) {
		s := h.score(tp.id)
		return s >= 0 && s != s0, fmt.Sprint(s)
	})
	return time.Now()
}

// awaitPresent waits until tp has heartbeated into the Redis running now
// (after an empty restart: its first heartbeat in the new Redis).
func (h *harness) awaitPresent(tp *trackerProc, d time.Duration) time.Time {
	h.t.Helper()
	await.Until(h.t, tp.id+" present in Redis", d, func() (bool, string) {
		s := h.score(tp.id)
		return s >= 0, fmt.Sprint(s)
	})
	return time.Now()
}

// awaitRecovery waits until every tracker has heartbeated into Redis and
// the fleet's epoch grants (a new or emptied Redis grants nothing for one
// instance TTL): the start of the tests ported from test/e2e, whose
// harness began there.
func (h *harness) awaitRecovery() {
	h.t.Helper()
	for _, tp := range h.trackers {
		h.awaitPresent(tp, 15*time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := store.NewStore(h.rdb, "wsgate").AwaitRecovery(ctx, fleet); err != nil {
		h.t.Fatal(err)
	}
}

// settle waits until every tracker has heartbeated twice after the last
// one started (each knows all the others), then until every gateway
// admits (a new Redis epoch may make trackers wait an instance TTL first).
func (h *harness) settle() {
	h.t.Helper()
	for range 2 {
		for _, tp := range h.trackers {
			h.nextHeartbeat(tp, 15*time.Second)
		}
	}
	h.awaitAdmitting(h.o.instanceTTL*3 + 15*time.Second)
	h.awaitDrained(20 * time.Second)
	h.stats.reset()
}

// awaitAdmitting probes every running tracker's gateway until each has
// admitted one connection (closed at once), and returns how long it took.
// The probes' rejections are counted: they are part of a fault's cost.
func (h *harness) awaitAdmitting(d time.Duration) time.Duration {
	h.t.Helper()
	start := time.Now()
	pending := map[*trackerProc]bool{}
	for _, tp := range h.trackers {
		if tp.running() {
			pending[tp] = true
		}
	}
	last := map[string]string{}
	for len(pending) > 0 {
		for tp := range pending {
			r := h.dial(tp)
			if r.Conn != nil {
				r.Conn.CloseNow()
				delete(pending, tp)
			} else {
				last[tp.id] = r.Outcome()
			}
		}
		if len(pending) == 0 {
			break
		}
		if time.Since(start) > d {
			h.t.Fatalf("no admission again within %s (liveness); last outcomes %v", d, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// metric reads one sample of tp's /metrics ("name{labels}" as exposed;
// ok false when absent or the tracker does not answer).
func (tp *trackerProc) metric(series string) (float64, bool) {
	ctx, cancel := rctx()
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+tp.telem+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// awaitFallback waits until tp knows Redis is unreachable (its fleet's
// wsgate_tracker_fallback_active gauge is 1).
func (h *harness) awaitFallback(tp *trackerProc, d time.Duration) {
	h.t.Helper()
	await.Until(h.t, tp.id+" in fallback", d, func() (bool, string) {
		v, ok := tp.metric(`wsgate_tracker_fallback_active{fleet="` + fleet + `"}`)
		return ok && v == 1, fmt.Sprint(v, ok)
	})
}

// redisCount is what Redis counts for the fleet: the pods' counts summed
// (avail and load), which admission decides on, and the summary's live
// count, the totals the alive instances' heartbeats published, which the
// scaler reads (-1 when Redis does not answer).
func (h *harness) redisCount() (pods, live int64) {
	ctx, cancel := rctx()
	defer cancel()
	for _, k := range []string{keys.avail, keys.load} {
		zs, err := h.rdb.ZRangeWithScores(ctx, k, 0, -1).Result()
		if err != nil {
			return -1, -1
		}
		for _, z := range zs {
			pods += int64(z.Score)
		}
	}
	sum, err := store.NewStore(h.rdb, "wsgate").Summary(ctx, fleet, time.Now())
	if err != nil {
		return -1, -1
	}
	return pods, sum.Live
}

// live is the fleet's live count in Redis, its pods' counts (-1: Redis
// does not answer).
func (h *harness) live() int64 {
	pods, _ := h.redisCount()
	return pods
}

// backendLive is what the backends hold now, all together.
func (h *harness) backendLive() int64 {
	var n int64
	for _, b := range h.backends {
		n += b.Live.Load()
	}
	return n
}

// awaitBackends waits until the backends hold n connections together.
func (h *harness) awaitBackends(n int64, d time.Duration) {
	h.t.Helper()
	await.Until(h.t, fmt.Sprintf("backends hold %d", n), d, func() (bool, string) {
		l := h.backendLive()
		return l == n, fmt.Sprint(l)
	})
}

// awaitDrained waits until, every client closed, the backends hold
// nothing and Redis counts nothing: no count is lost or left behind.
func (h *harness) awaitDrained(d time.Duration) time.Duration {
	h.t.Helper()
	return h.awaitCounted(0, d)
}

// awaitCounted waits until the backends hold n connections and Redis
// counts exactly those, in the pods' counts and in the summary: the
// releases of every connection that ended have reached Redis (a tracker
// sends them after the access log reports the end, in its next release
// call), and every instance's heartbeat since published its total.
func (h *harness) awaitCounted(n int64, d time.Duration) time.Duration {
	h.t.Helper()
	start := time.Now()
	await.Until(h.t, fmt.Sprintf("backends and Redis at %d", n), d, func() (bool, string) {
		b := h.backendLive()
		pods, live := h.redisCount()
		return b == n && pods == n && live == n, fmt.Sprintf("backends %d, redis pods %d live %d", b, pods, live)
	})
	return time.Since(start)
}

// maxHeld is the most connections any backend ever held at once.
func (h *harness) maxHeld() int64 {
	var m int64
	for _, b := range h.backends {
		m = max(m, b.Max.Load())
	}
	return m
}

// checkCap fails the test if any backend ever held more than the cap.
func (h *harness) checkCap(fault string) {
	h.t.Helper()
	for _, b := range h.backends {
		if m := b.Max.Load(); m > int64(h.o.cap) {
			h.t.Errorf("%s: backend %s held %d connections at once, cap %d", fault, b.Addr, m, h.o.cap)
		}
	}
}

// logCost records what a fault cost, in one line for the README:
// rejected, the rejections of the dials made while the fault acted, by
// reason; recovery, the time from the fault's end until every gateway
// admitted again; recovering, the rejections of the probes meanwhile (one
// dial per gateway about every 50 ms, so they scale with recovery).
func (h *harness) logCost(fault, rejected string, recovery time.Duration, recovering string) {
	h.t.Helper()
	h.t.Logf("cost: fault=%s rejected=%s recovery=%.1fs recovering=%s max=%d/%d", fault, rejected, recovery.Seconds(), recovering, h.maxHeld(), h.o.cap)
}

// recover closes the test's connections, measures how long after healed
// every gateway admits again, logs the fault's cost and checks that the
// counts drain to 0.
func (h *harness) recover(fault string, held *conns, healed time.Time) {
	h.t.Helper()
	rejected := h.stats.take()
	held.closeAll()
	h.awaitAdmitting(h.o.instanceTTL*3 + 15*time.Second)
	h.logCost(fault, rejected, time.Since(healed), h.stats.take())
	h.awaitDrained(20 * time.Second)
}

// churn runs n clients until ctx ends: each dials through a random
// gateway (of those tps), holds an admitted connection for 50–400 ms, and
// closes it. It returns a function that waits for them all to stop, every
// connection closed.
func (h *harness) churn(ctx context.Context, n int, seed uint64, tps func() []*trackerProc) func() {
	return h.churnSeen(ctx, n, seed, tps, nil)
}

// churnSeen is churn that tells admitted, when not nil, of each admission
// as it happens: through which tracker, and when.
func (h *harness) churnSeen(ctx context.Context, n int, seed uint64, tps func() []*trackerProc, admitted func(tracker string, at time.Time)) func() {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for ctx.Err() == nil {
				all := tps()
				tp := all[rng.IntN(len(all))]
				r := h.dial(tp)
				var wait time.Duration
				if r.Conn != nil {
					if admitted != nil {
						admitted(tp.id, time.Now())
					}
					wait = time.Duration(50+rng.IntN(350)) * time.Millisecond
				} else {
					wait = time.Duration(20+rng.IntN(80)) * time.Millisecond
				}
				select {
				case <-ctx.Done():
				case <-time.After(wait):
				}
				if r.Conn != nil {
					r.Conn.CloseNow()
				}
			}
		}()
	}
	return wg.Wait
}
