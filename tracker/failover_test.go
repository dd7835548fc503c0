package tracker_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// A failover through real redis-server processes: two trackers heartbeat on
// a primary with a replica; the primary dies, the replica is promoted
// (REPLICAOF NO ONE) and the trackers' client follows it. With
// WaitReplicas the promoted replica's recovery wait ends once both
// re-published, long before the instance TTL (PROTOCOL.md, "Ending the
// wait early after a failover"); without, it keeps its full length.
func TestFailoverEndsTheRecoveryWaitEarly(t *testing.T) {
	for _, wait := range []int{1, 0} {
		t.Run(fmt.Sprintf("WaitReplicas=%d", wait), func(t *testing.T) { checkFailoverWait(t, wait) })
	}
}

func checkFailoverWait(t *testing.T, wait int) {
	const ttl = 30 * time.Second
	ctx := context.Background()
	primary := redistest.Start(t)
	replica := redistest.StartReplica(t, primary)

	// The trackers' client dials whichever server is the primary now.
	var target atomic.Value
	target.Store(primary.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: "primary", MaxRetries: -1,
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, target.Load().(string))
		}})
	t.Cleanup(func() { rdb.Close() })
	s := store.NewStore(rdb, "wsgate")

	// The fleet's epoch on the primary, past its wait (as after the first
	// TTL of a fleet's life), made by heartbeats that waited if wait does.
	res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: ttl, RecoveryWait: time.Millisecond, Seq: 1, WaitReplicas: wait})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: ttl, RecoveryWait: time.Millisecond, Seq: 2, WaitReplicas: wait, Confirm: res.Epoch}); err != nil {
		t.Fatal(err)
	}
	await.True(t, "the primary's epoch past its wait", 5*time.Second, func() bool {
		left, err := s.Recovery(ctx, "chat")
		return err == nil && left == 0
	})

	trs := make([]*tracker.Tracker, 2)
	for i := range trs {
		tr, err := tracker.New(tracker.Config{InstanceID: fmt.Sprintf("e%d", i+1), Heartbeat: 200 * time.Millisecond, InstanceTTL: ttl,
			RedisTimeout: 2 * time.Second, WaitReplicas: wait, WaitTimeout: time.Second, Fleets: []fleets.Fleet{fleetCfg("chat", 2, "10.0.0.1:80")}}, s)
		if err != nil {
			t.Fatal(err)
		}
		trs[i] = tr
	}
	within, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, tr := range trs {
		if err := tr.AwaitGranting(within); err != nil {
			t.Fatal(err)
		}
	}
	// Admitted through Redis: with WaitReplicas, once the replica had it.
	r, err := trs[0].Admit(within, "chat")
	if err != nil || !r.Admitted || r.Fallback {
		t.Fatalf("admit on the primary: %+v, %v", r, err)
	}
	if wait == 0 {
		// Without WAIT the replica may lag; wait for it here, so that the
		// only difference between the cases is what the heartbeats say.
		if n, err := primary.Client().Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
			t.Fatalf("WAIT 1: %d, %v", n, err)
		}
	}

	replica.Promote()
	primary.Kill()
	target.Store(replica.Addr())
	promoted := time.Now()
	// Each tracker re-publishes on the promoted replica (the first call on
	// a connection to the dead primary fails: the heartbeat after it redials).
	for _, tr := range trs {
		await.True(t, "a heartbeat on the promoted replica", 10*time.Second, func() bool { return tr.Heartbeat(ctx) == nil })
	}
	left, err := store.NewStore(replica.Client(), "wsgate").Recovery(ctx, "chat")
	if err != nil {
		t.Fatal(err)
	}
	if wait == 0 {
		if left < ttl/2 {
			t.Fatalf("without WaitReplicas the promoted replica's wait is %v after both re-published; want the full one (%v)", left, ttl)
		}
		return
	}
	if left != 0 {
		t.Fatalf("the promoted replica still waits %v after both trackers re-published; want it over", left)
	}
	for _, tr := range trs {
		if err := tr.AwaitGranting(within); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("the promoted replica's recovery wait ended %v after the promotion (instance TTL %v)", time.Since(promoted).Round(time.Millisecond), ttl)
	// It has no replica of its own yet, so no admission can be
	// acknowledged: refused (e2 holds nothing its fallback could reuse).
	if r, err := trs[1].Admit(within, "chat"); err != nil || r.Admitted || r.Reason != "redis_down" {
		t.Fatalf("admit on the promoted replica without a replica: %+v, %v; want refused, redis_down", r, err)
	}
	// A replica of the new primary (as Sentinel turns the old one into):
	// admissions go through Redis again at e2's next heartbeat.
	redistest.StartReplica(t, replica)
	await.True(t, "e2 admitting through Redis again", 10*time.Second, func() bool {
		return trs[1].Heartbeat(ctx) == nil && !trs[1].Degraded("chat")
	})
	// e1's connection is counted on the new primary: one more fits under
	// the cap of 2, not two.
	if r, err := trs[1].Admit(within, "chat"); err != nil || !r.Admitted || r.Fallback {
		t.Fatalf("admit on the promoted replica: %+v, %v", r, err)
	}
	if r, err := trs[1].Admit(within, "chat"); err != nil || r.Admitted {
		t.Fatalf("a third connection on a pod of cap 2: %+v, %v; want refused", r, err)
	}
}
