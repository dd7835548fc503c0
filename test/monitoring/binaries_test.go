package monitoring

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/test/wsgatebin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	wsgatebin.Remove()
	os.Exit(code)
}

// wsgate is the real binary, built once per run from the repository's own
// module (its go.mod, not this module's, decides what goes in).
func wsgate(t *testing.T) string {
	t.Helper()
	return wsgatebin.Path(t)
}

// tool returns the path of a program the tests run, skipping without it, or
// failing under CI=true (CI must not pass by not running what it claims).
func tool(t *testing.T, name, debianPkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found on PATH: CI requires it (make deps; apt-get install %s)", name, debianPkg)
	}
	t.Skipf("%s not found on PATH; run `make deps` (or apt-get install %s)", name, debianPkg)
	return ""
}

func freeAddr(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(redistest.FreePort(t)))
}

// proc is a process the test started; it is killed when the test ends.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    *bytes.Buffer
	mu     *sync.Mutex
	exited chan struct{}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func start(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: &bytes.Buffer{}, mu: &sync.Mutex{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = lockedWriter{p.mu, p.log}
	p.cmd.Stderr = p.cmd.Stdout
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
		if t.Failed() {
			t.Logf("%s's log:\n%s", name, p.tail(30))
		}
	})
	return p
}

func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	lines := strings.Split(strings.TrimRight(p.log.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// awaitOK polls url until it answers 200, the process exits, or limit passes.
func (p *proc) awaitOK(t *testing.T, url string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-p.exited:
			t.Fatalf("%s exited:\n%s", p.name, p.tail(40))
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not 200 within %s (last: %v):\n%s", p.name, url, limit, statusOf(resp, err), p.tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func statusOf(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// The one fleet of the stack, and the timing that keeps a run short: a
// tracker admits one instanceTTL after it first meets an empty Redis.
const (
	fleet       = "chat"
	capPerPod   = 2
	heartbeat   = "250ms"
	instanceTTL = "2s"
	// The scaler reads each fleet from Redis this often for /metrics.
	scalerMetricsInterval = time.Second
)

// stack is a real redis-server, a tracker and a scaler, run from the
// binary as the chart runs them, on loopback.
type stack struct {
	redis                     *redistest.Server
	tracker, scaler           *proc
	admitAddr, accessLogAddr  string
	trackerTelem, scalerTelem string
	scalerGRPC                string
}

// startStack starts the stack with the fleet placing onto pod (an ip:port)
// and returns once both processes are ready (the tracker's first heartbeat
// reached Redis): no admission has been asked for yet.
func startStack(t *testing.T, pod string) *stack {
	t.Helper()
	bin := wsgate(t)
	s := &stack{redis: redistest.Start(t)}
	cfg := filepath.Join(t.TempDir(), "fleets.yaml")
	fleets := fmt.Sprintf("instanceTTL: %s\nfleets:\n  - name: %s\n    maxConnectionsPerPod: %d\n    ratePerSecond: 50\n    burst: 50\n    retryAfter: 1s\n    pods: [%q]\n", instanceTTL, fleet, capPerPod, pod)
	if err := os.WriteFile(cfg, []byte(fleets), 0o644); err != nil {
		t.Fatal(err)
	}
	s.admitAddr, s.accessLogAddr, s.trackerTelem = freeAddr(t), freeAddr(t), freeAddr(t)
	s.tracker = start(t, "tracker", bin, "tracker", "--config", cfg, "--redis-addr", s.redis.Addr(),
		"--instance-id", "envoy-0", "--heartbeat", heartbeat,
		// Redis' answers, not the machine's load, decide: a busy CI runner
		// must not turn admissions into fallback decisions (the gateway's
		// admit timeout is raised to match).
		"--redis-timeout", "2s",
		"--listen", s.admitAddr, "--access-log-listen", s.accessLogAddr, "--telemetry-listen", s.trackerTelem)
	s.scalerGRPC, s.scalerTelem = freeAddr(t), freeAddr(t)
	s.scaler = start(t, "scaler", bin, "scaler", "--config", cfg, "--redis-addr", s.redis.Addr(),
		"--settle", "1s", "--metrics-interval", scalerMetricsInterval.String(),
		"--listen", s.scalerGRPC, "--telemetry-listen", s.scalerTelem)
	s.tracker.awaitOK(t, "http://"+s.trackerTelem+"/readyz", 30*time.Second)
	s.scaler.awaitOK(t, "http://"+s.scalerTelem+"/readyz", 30*time.Second)
	return s
}
