package load

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/test/wsbackend"

	"github.com/wsgate/wsgate/envoy/gateway"
)

// The test binary re-executes itself in one of these roles: a process
// cannot hold the whole run's descriptors where RLIMIT_NOFILE's hard limit
// is 20,000 and may not be raised, as in unprivileged containers.
const (
	roleEnv      = "WSGATE_LOAD_ROLE"
	roleGateway  = "gateway"
	roleBackends = "backends"
)

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "":
		code := m.Run()
		peerRuns.summary(os.Stdout)
		shardRuns.shardSummary(os.Stdout)
		os.Exit(code)
	case roleGateway:
		serveRole(gatewayRole)
	case roleBackends:
		serveRole(backendsRole)
	default:
		fmt.Fprintf(os.Stderr, "unknown %s %q\n", roleEnv, os.Getenv(roleEnv))
		os.Exit(2)
	}
}

// serveRole prints the role's addresses on one line, then serves until its
// parent closes stdin (or dies), and shuts down.
func serveRole(start func() ([]string, func(), error)) {
	addrs, stop, err := start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(strings.Join(addrs, " "))
	_, _ = io.Copy(io.Discard, os.Stdin)
	stop()
	os.Exit(0)
}

func gatewayRole() ([]string, func(), error) {
	if _, err := raiseNofile(1 << 16); err != nil {
		return nil, nil, err
	}
	flush, err := time.ParseDuration(os.Getenv("WSGATE_LOAD_FLUSH"))
	if err != nil {
		return nil, nil, fmt.Errorf("WSGATE_LOAD_FLUSH: %w", err)
	}
	gw, err := gateway.New(gateway.Config{
		TrackerURL: os.Getenv("WSGATE_LOAD_TRACKER"), AccessLogAddr: os.Getenv("WSGATE_LOAD_ACCESSLOG"),
		Fleet: fleet, NodeID: os.Getenv("WSGATE_LOAD_NODE"), FlushInterval: flush, Logger: quiet,
	})
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("gateway listen: %w", err)
	}
	go func() { _ = gw.Serve(ln) }()
	return []string{ln.Addr().String()}, func() { _ = gw.Close() }, nil
}

func backendsRole() ([]string, func(), error) {
	if _, err := raiseNofile(1 << 16); err != nil {
		return nil, nil, err
	}
	n, err := strconv.Atoi(os.Getenv("WSGATE_LOAD_PODS"))
	if err != nil {
		return nil, nil, fmt.Errorf("WSGATE_LOAD_PODS: %w", err)
	}
	var bes []*wsbackend.Backend
	var addrs []string
	for range n {
		be, err := wsbackend.Start()
		if err != nil {
			return nil, nil, err
		}
		bes = append(bes, be)
		addrs = append(addrs, be.Addr)
	}
	return addrs, func() {
		for _, be := range bes {
			be.Close()
		}
	}, nil
}

// child is a role process of this run.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addrs []string
	done  chan struct{}
}

// spawn starts role and waits for its addresses; stop (also run at the
// benchmark's end) shuts it down.
func spawn(b *testing.B, role string, env ...string) *child {
	b.Helper()
	self, err := os.Executable()
	if err != nil {
		b.Fatalf("find test binary: %v", err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(append(os.Environ(), roleEnv+"="+role), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s process: %v", role, err)
	}
	c := &child{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	b.Cleanup(c.stop)
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		s.Buffer(nil, 1<<20)
		if s.Scan() {
			line <- s.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case l, ok := <-line:
		if !ok || l == "" {
			b.Fatalf("%s process exited before listening", role)
		}
		c.addrs = strings.Fields(l)
	case <-time.After(10 * time.Second):
		b.Fatalf("%s process not listening within 10s", role)
	}
	return c
}

// stop closes the child's stdin, its signal to shut down cleanly, and kills
// it if it has not exited within 10 s.
func (c *child) stop() {
	_ = c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}
