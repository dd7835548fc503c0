package redistest

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// StartReplica starts a redis-server that replicates primary
// (--replicaof), on a free loopback port, and waits until their link is up
// and primary counts it among its connected replicas. Extra arguments are
// redis-server options.
func StartReplica(t testing.TB, primary *Server, extra ...string) *Server {
	t.Helper()
	// A full sync starts at once, not after the default 5s in which a
	// primary waits for more replicas to share a diskless transfer.
	if err := primary.cmd1("CONFIG", "SET", "repl-diskless-sync-delay", "0"); err != nil {
		t.Fatalf("redis CONFIG SET repl-diskless-sync-delay on %s: %v", primary.Addr(), err)
	}
	r := Start(t, append([]string{"--replicaof", "127.0.0.1", strconv.Itoa(primary.Port)}, extra...)...)
	AwaitReplicas(t, primary, 1)
	return r
}

// AwaitReplicas waits (up to 20s) until primary reports at least n
// connected replicas whose link is online (INFO replication).
func AwaitReplicas(t testing.TB, primary *Server, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := primary.Client()
	for {
		info, err := c.Info(ctx, "replication").Result()
		if err == nil && onlineReplicas(info) >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: fewer than %d online replicas within 20s: %v\n%s", primary.Addr(), n, err, info)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// onlineReplicas counts INFO replication's "slaveN:...,state=online,..."
// lines: replicas done with their initial sync.
func onlineReplicas(info string) int {
	n := 0
	for _, line := range strings.Split(info, "\n") {
		if strings.HasPrefix(line, "slave") && strings.Contains(line, "state=online") {
			n++
		}
	}
	return n
}

// Promote makes s a primary (REPLICAOF NO ONE), with what it has received.
func (s *Server) Promote() {
	s.t.Helper()
	if err := s.cmd1("REPLICAOF", "NO", "ONE"); err != nil {
		s.t.Fatalf("redis REPLICAOF NO ONE on %s: %v", s.Addr(), err)
	}
}
