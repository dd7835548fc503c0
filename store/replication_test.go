package store_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/redistest"
)

// waitTimeout is the WAIT of the admissions that must fail; those that
// must be acknowledged wait longer (okTimeout), so that a busy machine
// does not fail them.
const waitTimeout, okTimeout = 100 * time.Millisecond, 5 * time.Second

// replicated is a primary with one replica, a Store on the primary that
// waits for it, and the fleet "chat" with two ready pods joined by e1.
func replicated(t *testing.T) (primary, replica *redistest.Server, s *store.Store, epoch string) {
	t.Helper()
	primary = redistest.Start(t)
	replica = redistest.StartReplica(t, primary)
	s = store.NewStore(primary.Client(), "wsgate").WithWait(1, okTimeout)
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80"))
	return primary, replica, s, storetest.EpochOf(t, s, "chat", "e1")
}

func admitReq(epoch string, n int) store.AdmitRequest {
	return store.AdmitRequest{Fleet: "chat", MaxPerPod: 100, Policy: fleets.PolicySpread, Instance: "e1", Epoch: epoch, Now: storetest.T0, N: n}
}

func waitCalls(t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_wait:calls="); ok {
			n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
			return n
		}
	}
	return 0
}

// An admission acknowledged by the replica is on the replica when Admit
// returns, and a batch of admissions costs one WAIT.
func TestWaitAdmitsOnceTheReplicaHasIt(t *testing.T) {
	primary, replica, s, epoch := replicated(t)
	ctx := context.Background()
	before := waitCalls(t, primary.Client())
	a, err := s.Admit(ctx, admitReq(epoch, 3))
	if err != nil || len(a.Pods) != 3 {
		t.Fatalf("admit 3 with a live replica: %+v, %v", a, err)
	}
	if got := waitCalls(t, primary.Client()) - before; got != 1 {
		t.Errorf("one call of 3 admissions sent %d WAITs, want 1", got)
	}
	// Acknowledged: the replica has applied it already, no waiting.
	if got := storetest.Held(t, replica.Client(), "chat", "e1"); got != 3 {
		t.Errorf("replica counts %d for e1 after 3 acknowledged admissions, want 3", got)
	}
	one, err := s.AdmitOne(ctx, admitReq(epoch, 1))
	if err != nil || one.Pod == "" {
		t.Fatalf("admit one: %+v, %v", one, err)
	}
	if got := storetest.Held(t, replica.Client(), "chat", "e1"); got != 4 {
		t.Errorf("replica counts %d for e1, want 4", got)
	}
}

// With the replica frozen, every admission fails with ErrNotReplicated
// after the wait (the script ran: the primary counts it); once the
// replica is back, admissions are acknowledged again.
func TestWaitRefusesWhatTheReplicaDidNotAcknowledge(t *testing.T) {
	primary, replica, s, epoch := replicated(t)
	ctx := context.Background()
	if a, err := s.Admit(ctx, admitReq(epoch, 2)); err != nil || len(a.Pods) != 2 {
		t.Fatalf("admit 2 with a live replica: %+v, %v", a, err)
	}
	replica.Stop()
	defer replica.Cont()
	refuse5(t, s, epoch)
	// The scripts ran: the primary over-counts until a heartbeat.
	if got := storetest.Held(t, primary.Client(), "chat", "e1"); got != 7 {
		t.Errorf("primary counts %d for e1, want 7 (2 acknowledged, 5 not)", got)
	}
	replica.Cont()
	if a, err := s.Admit(ctx, admitReq(epoch, 1)); err != nil || len(a.Pods) != 1 {
		t.Fatalf("admit with the replica back: %+v, %v", a, err)
	}
	if got := storetest.Held(t, replica.Client(), "chat", "e1"); got != 8 {
		t.Errorf("replica counts %d for e1 once back, want 8", got)
	}
}

// Split brain: the replica is promoted with what it has while the old
// primary keeps serving. Every admission through the old primary fails
// (nothing acknowledges it any more), and the promoted replica counts
// exactly what was acknowledged before: nothing the tracker used is
// missing from it, and nothing it refused is there.
func TestWaitUnderSplitBrain(t *testing.T) {
	primary, replica, s, epoch := replicated(t)
	ctx := context.Background()
	if a, err := s.Admit(ctx, admitReq(epoch, 2)); err != nil || len(a.Pods) != 2 {
		t.Fatalf("admit 2 with a live replica: %+v, %v", a, err)
	}
	replica.Promote()
	refuse5(t, s, epoch)
	if got := storetest.Held(t, primary.Client(), "chat", "e1"); got != 7 {
		t.Errorf("old primary counts %d for e1, want 7 (2 acknowledged, 5 not)", got)
	}
	if got := storetest.Held(t, replica.Client(), "chat", "e1"); got != 2 {
		t.Errorf("promoted replica counts %d for e1, want the 2 acknowledged", got)
	}
}

// refuse5 admits 5 times one by one; each must fail with ErrNotReplicated
// (not the call's deadline), not before the wait is over.
func refuse5(t *testing.T, s *store.Store, epoch string) {
	t.Helper()
	for i := range 5 {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), okTimeout)
		a, err := s.WithWait(1, waitTimeout).Admit(ctx, admitReq(epoch, 1))
		cancel()
		if !errors.Is(err, store.ErrNotReplicated) {
			t.Fatalf("admission %d: %+v, %v; want ErrNotReplicated", i, a, err)
		}
		if d := time.Since(start); d < waitTimeout {
			t.Errorf("admission %d failed after %s, before the wait of %s", i, d, waitTimeout)
		}
		if d := store.DescribeRedisError(err); !strings.Contains(d, "--redis-wait-replicas") {
			t.Errorf("DescribeRedisError(%v) = %q, want it to name the flag", err, d)
		}
	}
}

// A refusal or a fence is not used either when WAIT fails: the model reads
// no reply that was not acknowledged.
func TestWaitWithoutReplicaFailsEveryCall(t *testing.T) {
	srv := redistest.Start(t)
	s := store.NewStore(srv.Client(), "wsgate").WithWait(1, 20*time.Millisecond)
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
	epoch := storetest.EpochOf(t, s, "chat", "e1")
	req := admitReq(epoch, 1)
	req.MaxPerPod = 0 // capacity: nothing to grant
	if _, err := s.Admit(context.Background(), req); !errors.Is(err, store.ErrNotReplicated) {
		t.Fatalf("admit without replicas, WAIT 1: %v, want ErrNotReplicated", err)
	}
	// Releases send no WAIT.
	if _, err := s.Release(context.Background(), store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: epoch, Seq: 1,
		Releases: []store.ReleaseCount{{Pod: "10.0.0.1:80", N: 1}}}); err != nil {
		t.Fatalf("release: %v", err)
	}
	if got := waitCalls(t, srv.Client()); got != 1 {
		t.Errorf("WAIT calls: %d, want 1 (the admission's only)", got)
	}
}

// On a Cluster the WAIT goes to the primary of the fleet's slot: the
// script runs there (no MOVED), and without replicas WAIT 1 says 0.
func TestWaitOnClusterGoesToTheSlotsPrimary(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	s := store.NewStore(rdb, "wsgate").WithWait(1, 20*time.Millisecond)
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
	epoch := storetest.EpochOf(t, s, "chat", "e1")
	for _, fleet := range []string{"chat", "other"} {
		req := admitReq(epoch, 1)
		req.Fleet = fleet
		_, err := s.Admit(context.Background(), req)
		if !errors.Is(err, store.ErrNotReplicated) || !strings.Contains(err.Error(), "0 of 1 replicas") {
			t.Errorf("admit %s on a Cluster without replicas, WAIT 1: %v, want 0 of 1 acknowledged", fleet, err)
		}
	}
}

func TestReplicationCheck(t *testing.T) {
	ctx := context.Background()
	single := redistest.Start(t)
	r, err := store.NewStore(single.Client(), "wsgate").Replication(ctx, "chat")
	if err != nil {
		t.Fatal(err)
	}
	if r.Role != "master" || r.Replicas != 0 || !r.ConfigRead {
		t.Errorf("single Redis: %+v", r)
	}
	for _, setup := range []store.SplitBrainSetup{{Topology: store.TopologySingle}, {Topology: store.TopologySingle, Reap: true}} {
		if risks := r.SplitBrainRisks(setup); len(risks) > 0 {
			t.Errorf("single Redis, %+v: risks %q, want none", setup, risks)
		}
	}
	if risks := r.SplitBrainRisks(store.SplitBrainSetup{Topology: store.TopologySentinel}); len(risks) != 1 || !strings.Contains(risks[0], "--redis-wait-replicas") {
		t.Errorf("Sentinel without WAIT: risks %q, want one naming --redis-wait-replicas", risks)
	}
	if notes := r.SplitBrainNotes(store.SplitBrainSetup{Topology: store.TopologySentinel, WaitReplicas: 1}); len(notes) != 1 {
		t.Errorf("WAIT 1 without a replica: notes %q, want one", notes)
	}

	primary := redistest.Start(t, "--min-replicas-to-write", "1", "--min-replicas-max-lag", "4")
	redistest.StartReplica(t, primary)
	redistest.StartReplica(t, primary)
	redistest.AwaitReplicas(t, primary, 2)
	r, err = store.NewStore(primary.Client(), "wsgate").Replication(ctx, "chat")
	if err != nil {
		t.Fatal(err)
	}
	if r.Role != "master" || r.Replicas != 2 || !r.ConfigRead || r.MinReplicasToWrite != 1 || r.MinReplicasMaxLag != 4 {
		t.Errorf("primary with 2 replicas: %+v", r)
	}
	for _, c := range []struct {
		setup store.SplitBrainSetup
		want  []string
	}{
		{store.SplitBrainSetup{Topology: store.TopologySingle}, []string{"--redis-wait-replicas to the number of replicas of the primary (2)"}},
		{store.SplitBrainSetup{Topology: store.TopologySentinel, WaitReplicas: 1}, []string{"set --redis-wait-replicas 2"}},
		{store.SplitBrainSetup{Topology: store.TopologySentinel, WaitReplicas: 2}, nil},
		{store.SplitBrainSetup{Topology: store.TopologySentinel, WaitReplicas: 2, Reap: true}, []string{"expiredInstances: keep or kube"}},
	} {
		risks := r.SplitBrainRisks(c.setup)
		if len(risks) != len(c.want) {
			t.Errorf("%+v: risks %q, want %q", c.setup, risks, c.want)
			continue
		}
		for i, w := range c.want {
			if !strings.Contains(risks[i], w) {
				t.Errorf("%+v: risk %q, want it to say %q", c.setup, risks[i], w)
			}
		}
	}

	// An ACL without CONFIG: the check says it could not read the write
	// lease, and is no error.
	acl := primary.ACLClient("wsgate", redistest.TrackerACL)
	r, err = store.NewStore(acl, "wsgate").Replication(ctx, "chat")
	if err != nil {
		t.Fatalf("replication check without CONFIG in the ACL: %v", err)
	}
	if r.ConfigRead || !strings.Contains(r.ConfigErr, "NOPERM") || r.Replicas != 2 {
		t.Errorf("without CONFIG in the ACL: %+v", r)
	}
}
