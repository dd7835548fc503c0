// Package redistest starts real redis-server processes for tests: a single
// server on a free loopback port, or a Redis Cluster of several. Where
// redis-server is missing the test is skipped, except under CI=true, where
// it fails: CI must never pass by not running what it claims to run.
package redistest

import (
	"bufio"
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

// Binary returns the path of tool (redis-server, redis-cli), skipping or
// failing t as the package comment says when it is missing.
func Binary(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found on PATH: CI requires it (make deps installs redis-server and redis-tools)", tool)
	}
	t.Skipf("%s not found on PATH; run `make deps` (or apt-get install redis-server redis-tools)", tool)
	return ""
}

// Server is one redis-server process owned by a test.
type Server struct {
	t      testing.TB
	bin    string
	dir    string
	Port   int
	extra  []string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Addr is the server's "127.0.0.1:port".
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// Start runs redis-server on a free loopback port with no persistence, so a
// restart after Kill comes back empty, and stops it when the test ends.
// Extra arguments are redis-server options ("--requirepass", "x").
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	return StartPort(t, FreePort(t), extra...)
}

// StartPort is Start on a port the caller chose (for callers that keep
// the ports they hand out apart from the kernel's ephemeral range, so that
// a restart finds its port free).
func StartPort(t testing.TB, port int, extra ...string) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t, "redis-server"), dir: t.TempDir(), Port: port, extra: extra}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	args := append([]string{
		"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", s.dir, "--protected-mode", "no",
	}, s.extra...)
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	out, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("redis-%d.log", time.Now().UnixNano())))
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); out.Close(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	if err := waitReady(s.Addr(), exited, 10*time.Second); err != nil {
		log, _ := os.ReadFile(out.Name())
		s.t.Fatalf("redis-server on %s: %v\n%s", s.Addr(), err, log)
	}
}

// Kill sends SIGKILL and waits for the process to be gone: Redis loses
// everything it held, as in a crash.
func (s *Server) Kill() {
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

// Restart starts the server again on the same port, empty: whatever a
// snapshot or an append-only file left in its directory is removed first.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.removeData()
	s.start()
}

// RestartWithData kills the server with SIGKILL, as in a crash, and starts
// it again on the same port from what it persisted: the append-only file
// of a server started with "--appendonly", "yes" (with "--appendfsync",
// "always" it holds every write acknowledged before the kill), or the
// snapshot of the last Save or BGSave. The data may be older than what
// the server had acknowledged; a new process (another run_id) serves it.
func (s *Server) RestartWithData() {
	s.t.Helper()
	s.Kill()
	s.start()
}

// Save writes a snapshot (SAVE, in the foreground) that RestartWithData
// loads.
func (s *Server) Save() {
	s.t.Helper()
	if err := s.cmd1("SAVE"); err != nil {
		s.t.Fatalf("redis SAVE: %v", err)
	}
}

// BGSave writes a snapshot in a forked child (BGSAVE) and waits until it
// is complete: rdb_bgsave_in_progress back to 0, and a LASTSAVE newer than
// before the call with rdb_last_bgsave_status ok.
func (s *Server) BGSave() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	before, err := c.LastSave(ctx).Result()
	if err != nil {
		s.t.Fatalf("redis LASTSAVE: %v", err)
	}
	if err := c.BgSave(ctx).Err(); err != nil {
		s.t.Fatalf("redis BGSAVE: %v", err)
	}
	for {
		info, err := c.Info(ctx, "persistence").Result()
		if err != nil {
			s.t.Fatalf("redis INFO persistence: %v", err)
		}
		last, _ := c.LastSave(ctx).Result()
		// LASTSAVE has a resolution of one second: a save within the same
		// second as the previous one is recognised by the flags alone.
		if strings.Contains(info, "rdb_bgsave_in_progress:0") && strings.Contains(info, "rdb_last_bgsave_status:ok") &&
			(last > before || strings.Contains(info, "rdb_changes_since_last_save:0")) {
			return
		}
		select {
		case <-ctx.Done():
			s.t.Fatalf("BGSAVE not complete within 20s: %s", info)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop sends SIGSTOP: the server keeps its sockets open and answers
// nothing until Cont, as a host that froze.
func (s *Server) Stop() { s.signal(syscall.SIGSTOP) }

// Cont sends SIGCONT to a server that Stop froze.
func (s *Server) Cont() { s.signal(syscall.SIGCONT) }

// Running reports whether the server process is up (possibly stopped).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(sig)
	}
}

func (s *Server) cmd1(args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	return c.Do(ctx, args...).Err()
}

// removeData deletes the snapshot and append-only files in the server's
// directory (their default names; Start's options do not change them).
func (s *Server) removeData() {
	for _, name := range []string{"dump.rdb", "appendonly.aof", "appendonlydir"} {
		if err := os.RemoveAll(filepath.Join(s.dir, name)); err != nil {
			s.t.Fatalf("remove %s: %v", name, err)
		}
	}
}

// Client returns a go-redis client for the server, closed with the test.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// TrackerACL and ScalerACL are the ACL rules README's Operations section
// documents (keep them equal): the commands the Go code and the scripts
// call, on wsgate's keys and channels only.
const (
	TrackerACL = "~{wsgate:*}* &{wsgate:*}* +evalsha +eval +script|load +info +time +wait +hgetall +hincrby +zrange " +
		"+del +expire +hdel +hget +hmget +hset +hkeys +publish +sadd +scard +smembers +type " +
		"+zadd +zcard +zcount +zincrby +zrangebyscore +zrem +zrevrangebyscore +zscore"
	ScalerACL = TrackerACL + " +scan +subscribe"
)

// ACLClient creates user on the server with rules (ACL SETUSER syntax, on
// top of no commands, keys or channels) and returns a client logged in as
// it, closed with the test.
func (s *Server) ACLClient(user, rules string) *redis.Client {
	s.t.Helper()
	args := []any{"ACL", "SETUSER", user, "on", ">pw", "resetkeys", "resetchannels", "-@all"}
	for _, r := range strings.Fields(rules) {
		args = append(args, r)
	}
	if err := s.Client().Do(context.Background(), args...).Err(); err != nil {
		s.t.Fatalf("ACL SETUSER: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Username: user, Password: "pw", DialTimeout: 5 * time.Second})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// FreePort returns a loopback TCP port nothing listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitReady polls with PING until the server answers; polling is the only
// readiness signal a redis-server process gives.
func waitReady(addr string, exited <-chan struct{}, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited during startup")
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(time.Second))
			_, _ = c.Write([]byte("PING\r\n"))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH")) {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no answer to PING within %s", limit)
}

// Cluster is a Redis Cluster of masters without replicas, owned by a test.
type Cluster struct {
	Nodes []*Server
}

// Addrs lists the nodes' addresses, to seed a cluster client.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr()
	}
	return out
}

// StartCluster starts n redis-server --cluster-enabled yes processes and
// joins them with redis-cli --cluster create, then waits for cluster_state:ok.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	cli := Binary(t, "redis-cli")
	c := &Cluster{}
	for i := 0; i < n; i++ {
		dir := t.TempDir()
		// The cluster bus gets a free port of its own: by default it is the
		// port + 10000, which another process may hold (a make test run
		// failed so: "Failed listening on port 45851 (cluster), aborting").
		port, bus := FreePort(t), FreePort(t)
		for bus == port {
			bus = FreePort(t)
		}
		c.Nodes = append(c.Nodes, StartPort(t, port, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--cluster-node-timeout", "2000", "--cluster-port", strconv.Itoa(bus)))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, node := range c.Nodes {
		rc := node.Client()
		for {
			info, err := rc.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("cluster node %s never reached cluster_state:ok: %v %s", node.Addr(), err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// SpreadOverMasters returns the first i (below tries) for which the keys
// keys(i) all live on different masters of rdb, and those masters'
// addresses in the keys' order: the tests of a sharded fleet pick with it
// a fleet name or key prefix whose groups land on as many masters.
func SpreadOverMasters(t testing.TB, rdb *redis.ClusterClient, tries int, keys func(i int) []string) (int, []string) {
	t.Helper()
	ctx := context.Background()
	for i := range tries {
		var masters []string
		seen := map[string]bool{}
		for _, key := range keys(i) {
			m, err := rdb.MasterForKey(ctx, key)
			if err != nil {
				t.Fatalf("master of %s: %v", key, err)
			}
			seen[m.Options().Addr] = true
			masters = append(masters, m.Options().Addr)
		}
		if len(seen) == len(masters) {
			return i, masters
		}
	}
	t.Fatalf("none of %d candidates puts its keys on as many masters", tries)
	return 0, nil
}

// CommandCalls is how many times the Redis server behind c ran each
// command so far (INFO commandstats: a script's inner calls included, the
// INFO of this call too), by lower-case name.
func CommandCalls(t testing.TB, c *redis.Client) map[string]int {
	t.Helper()
	stats, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(stats, "\r\n") {
		name, rest, ok := strings.Cut(line, ":calls=")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		out[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
	}
	return out
}
