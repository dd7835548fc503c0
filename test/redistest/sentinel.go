package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Replication and Sentinel, for failover tests: a replica is a Server
// started with ReplicaOf's options; Sentinels are `redis-server --sentinel`
// processes monitoring one primary.

// ReplicaOf is the redis-server options that make a server a replica of
// addr ("host:port") from its start.
func ReplicaOf(addr string) []string {
	host, port, _ := net.SplitHostPort(addr)
	return []string{"--replicaof", host, port}
}

// Replication is what a server's INFO replication says of its role.
type Replication struct {
	Role       string // master or slave
	MasterPort int    // a replica's primary (what it was told: a proxy's port, if so)
	LinkUp     bool   // a replica's master_link_status is up
	Offset     int64  // master_repl_offset: the replication stream this server has
	Replicas   int    // connected_slaves (a primary's)
}

// Replication reads INFO replication (an error when the server does not
// answer within a second).
func (s *Server) Replication() (Replication, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return Replication{}, fmt.Errorf("INFO replication of %s: %w", s.Addr(), err)
	}
	var r Replication
	for _, line := range strings.Split(info, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "role":
			r.Role = v
		case "master_port":
			r.MasterPort, _ = strconv.Atoi(v)
		case "master_link_status":
			r.LinkUp = v == "up"
		case "master_repl_offset":
			r.Offset, _ = strconv.ParseInt(v, 10, 64)
		case "connected_slaves":
			r.Replicas, _ = strconv.Atoi(v)
		}
	}
	return r, nil
}

// Do runs one command on the server (REPLICAOF NO ONE, CONFIG SET ...).
func (s *Server) Do(args ...any) error {
	return s.cmd1(args...)
}

// SentinelConfig is what one Sentinel monitors and how.
type SentinelConfig struct {
	MasterName string
	MasterAddr string // "127.0.0.1:port"
	Quorum     int
	// DownAfter is down-after-milliseconds: how long the primary must not
	// answer before a Sentinel thinks it down.
	DownAfter time.Duration
	// FailoverTimeout is failover-timeout: among others, how long before a
	// Sentinel retries a failover, and how long it lets a replica
	// replicate from another address than the primary it knows before it
	// reconfigures it (+fix-slave-config).
	FailoverTimeout time.Duration
}

// Sentinel is one `redis-server --sentinel` process owned by a test; its
// configuration file (which Sentinel rewrites) is in a temporary directory.
type Sentinel struct {
	Port   int
	log    string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Addr is the Sentinel's "127.0.0.1:port".
func (s *Sentinel) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// StartSentinel runs a Sentinel on port, monitoring c, and kills it when
// the test ends.
func StartSentinel(t testing.TB, port int, c SentinelConfig) *Sentinel {
	t.Helper()
	bin := Binary(t, "redis-server")
	dir := t.TempDir()
	host, mport, err := net.SplitHostPort(c.MasterAddr)
	if err != nil {
		t.Fatalf("sentinel: master address %q: %v", c.MasterAddr, err)
	}
	conf := filepath.Join(dir, "sentinel.conf")
	text := fmt.Sprintf(`port %d
bind 127.0.0.1
protected-mode no
daemonize no
dir %s
sentinel monitor %s %s %s %d
sentinel down-after-milliseconds %s %d
sentinel failover-timeout %s %d
sentinel parallel-syncs %s 1
`, port, dir, c.MasterName, host, mport, c.Quorum, c.MasterName, c.DownAfter.Milliseconds(), c.MasterName, c.FailoverTimeout.Milliseconds(), c.MasterName)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &Sentinel{Port: port, log: filepath.Join(dir, "sentinel.log")}
	out, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, conf, "--sentinel")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server --sentinel: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); out.Close(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	t.Cleanup(s.Kill)
	if err := waitReady(s.Addr(), exited, 10*time.Second); err != nil {
		t.Fatalf("sentinel on %s: %v\n%s", s.Addr(), err, s.LogTail(40))
	}
	return s
}

// Kill sends SIGKILL and waits for the process to be gone.
func (s *Sentinel) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// LogTail is the last n lines of the Sentinel's log (its events:
// +sdown, +odown, +switch-master ...), for a failing test.
func (s *Sentinel) LogTail(n int) string { return Tail(s.log, n) }

// Tail is the last n lines of the file at path (a process' log, for a
// failing test), or why it could not be read.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// SentinelView is what one Sentinel knows of its master.
type SentinelView struct {
	Master   string // the primary's address
	Replicas int    // replicas it knows that are neither down nor disconnected
	Others   int    // other Sentinels it knows
}

// View asks the Sentinel (SENTINEL GET-MASTER-ADDR-BY-NAME, REPLICAS,
// SENTINELS) what it knows of master.
func (s *Sentinel) View(master string) (SentinelView, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	var v SentinelView
	addr, err := c.GetMasterAddrByName(ctx, master).Result()
	if err != nil {
		return v, fmt.Errorf("sentinel %s: get-master-addr-by-name %s: %w", s.Addr(), master, err)
	}
	v.Master = net.JoinHostPort(addr[0], addr[1])
	replicas, err := c.Replicas(ctx, master).Result()
	if err != nil {
		return v, fmt.Errorf("sentinel %s: replicas %s: %w", s.Addr(), master, err)
	}
	for _, r := range replicas {
		if f := r["flags"]; !strings.Contains(f, "down") && !strings.Contains(f, "disconnected") && r["master-link-status"] == "ok" {
			v.Replicas++
		}
	}
	others, err := c.Sentinels(ctx, master).Result()
	if err != nil {
		return v, fmt.Errorf("sentinel %s: sentinels %s: %w", s.Addr(), master, err)
	}
	v.Others = len(others)
	return v, nil
}
