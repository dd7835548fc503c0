package store_test

// The early end of a promoted replica's recovery wait (sync.lua;
// PROTOCOL.md, "Ending the wait early after a failover"), on real
// redis-server processes: a primary and its replica, promoted with
// REPLICAOF NO ONE, and a primary restarted from its snapshot.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
)

// longWait is the recovery wait the heartbeats ask for on the new
// primary: an early end is seen as a wait that is over long before it.
const longWait = time.Hour

const earlyPod = "10.0.0.1:80"

// infoField reads one field of c's INFO section.
func infoField(t *testing.T, c *redis.Client, section, field string) string {
	t.Helper()
	info, err := c.Info(context.Background(), section).Result()
	if err != nil {
		t.Fatalf("INFO %s: %v", section, err)
	}
	for _, l := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && k == field {
			return v
		}
	}
	t.Fatalf("INFO %s without %s:\n%s", section, field, info)
	return ""
}

// replicaPair starts a primary and a replica of it, in sync.
func replicaPair(t *testing.T) (primary, replica *redistest.Server) {
	t.Helper()
	primary = redistest.Start(t)
	return primary, redistest.StartReplica(t, primary)
}

// beater sends the heartbeats of instances on one Redis; beat publishes
// held connections of inst on earlyPod and asks for wait as a new epoch's
// recovery wait.
type beater struct {
	t    *testing.T
	s    *store.Store
	seq  map[string]uint64
	wait int // the heartbeats' WaitReplicas
}

func (b *beater) beat(inst string, held int, wait time.Duration, confirm string) store.SyncResult {
	b.t.Helper()
	b.seq[inst]++
	var counts []store.PodCount
	if held > 0 {
		counts = []store.PodCount{{Pod: earlyPod, Live: held, Established: held}}
	}
	res, err := b.s.Sync(context.Background(), store.SyncRequest{Fleet: "chat", Instance: inst, Lease: time.Hour,
		RecoveryWait: wait, Seq: b.seq[inst], Confirm: confirm, WaitReplicas: b.wait, Counts: counts})
	if err != nil || res.Stale {
		b.t.Fatalf("heartbeat of %s: %+v, %v", inst, res, err)
	}
	return res
}

// epochPastItsWait makes the fleet's epoch on b's Redis with every
// instance of insts joined and its wait over (a wait of 1 ms, confirmed),
// and admits one connection for the first of them; it returns the epoch.
func epochPastItsWait(t *testing.T, b *beater, insts ...string) string {
	t.Helper()
	storetest.SetPods(t, b.s, "chat", storetest.Pods(earlyPod))
	res := b.beat(insts[0], 0, time.Millisecond, "")
	for _, in := range insts { // each confirms it: as if its own clock saw a TTL pass
		b.beat(in, 0, time.Millisecond, res.Epoch)
	}
	await.True(t, "a confirmed wait of 1 ms over by Redis' clock", 5*time.Second, func() bool {
		left, err := b.s.Recovery(context.Background(), "chat")
		return err == nil && left == 0
	})
	a, err := b.s.AdmitOne(context.Background(), store.AdmitRequest{Fleet: "chat", MaxPerPod: 2, Policy: fleets.PolicyPack,
		Instance: insts[0], Epoch: res.Epoch, Now: storetest.T0, Seq: b.seq[insts[0]]})
	if err != nil || a.Fence != "" || a.Pod == "" {
		t.Fatalf("admit for %s in the epoch past its wait: %+v, %v", insts[0], a, err)
	}
	return res.Epoch
}

// ack is the tracker's WAIT after an admission: a replica has every
// write of the primary so far (WAIT 1 answers how many did: with two
// replicas, 1 or 2).
func ack(t *testing.T, primary *redistest.Server) {
	t.Helper()
	n, err := primary.Client().Wait(context.Background(), 1, 5*time.Second).Result()
	if err != nil || n < 1 {
		t.Fatalf("WAIT 1: %d replicas acknowledged, %v", n, err)
	}
}

// The wait of a promoted replica's new epoch ends once every instance of
// the set it received heartbeated in it: not before the last one (c), and
// long before the wait they asked for.
func TestPromotedReplicaEndsItsWaitOnceEveryInstanceRepublished(t *testing.T) {
	primary, replica := replicaPair(t)
	ctx := context.Background()
	onP := &beater{t: t, s: store.NewStore(primary.Client(), ""), seq: map[string]uint64{}, wait: 1}
	old := epochPastItsWait(t, onP, "a", "b", "c")
	// The epoch names the primary's replication id (kept current: the
	// primary took a new one when its replica first attached).
	keys := onP.s.Keys("chat")
	if repl := primary.Client().HGet(ctx, keys.Epoch(), "repl").Val(); repl != infoField(t, primary.Client(), "replication", "master_replid") {
		t.Fatalf("epoch repl %q, want the primary's master_replid", repl)
	}
	ack(t, primary)
	replica.Promote()
	if id2, id := infoField(t, replica.Client(), "replication", "master_replid2"), infoField(t, primary.Client(), "replication", "master_replid"); id2 != id {
		t.Fatalf("the promoted replica's master_replid2 %q, want its old primary's master_replid %q", id2, id)
	}

	onR := &beater{t: t, s: store.NewStore(replica.Client(), ""), seq: onP.seq, wait: 1}
	start := time.Now()
	res := onR.beat("a", 1, longWait, "")
	if !res.EpochCreated || res.Epoch == old || res.Recovering < longWait/2 {
		t.Fatalf("a's first heartbeat on the promoted replica: %+v; want a new epoch in its wait", res)
	}
	epoch := res.Epoch
	if early := replica.Client().HGet(ctx, keys.Epoch(), "early").Val(); early != "2" {
		t.Fatalf("the promoted replica's epoch after a re-published: early %q, want 2 (b and c)", early)
	}
	if res := onR.beat("b", 0, longWait, ""); res.Recovering < longWait/2 {
		t.Fatalf("after a and b re-published (c has not): %+v; want the wait to go on", res)
	}
	a, err := onR.s.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 2, Policy: fleets.PolicyPack, Instance: "b", Epoch: epoch, Now: storetest.T0, Seq: onR.seq["b"]})
	if err != nil || a.Fence != store.FenceRecovering {
		t.Fatalf("admit while c has not re-published: %+v, %v; want recovering", a, err)
	}
	if res := onR.beat("c", 0, longWait, ""); res.Recovering != 0 || res.Epoch != epoch {
		t.Fatalf("after every instance re-published: %+v; want the wait over", res)
	}
	if left, err := onR.s.Recovery(ctx, "chat"); err != nil || left != 0 {
		t.Fatalf("Recovery after the early end: %v, %v; want 0", left, err)
	}
	// The counts are the instances' truth: a's connection is counted, so
	// one more fits under a cap of 2, not two.
	a, err = onR.s.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 2, Policy: fleets.PolicyPack, Instance: "b", Epoch: epoch, Now: storetest.T0, Seq: onR.seq["b"]})
	if err != nil || a.Fence != "" || a.Pod == "" {
		t.Fatalf("admit after the early end: %+v, %v; want granted", a, err)
	}
	a, err = onR.s.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 2, Policy: fleets.PolicyPack, Instance: "c", Epoch: epoch, Now: storetest.T0, Seq: onR.seq["c"]})
	if err != nil || a.Fence != "" || a.Pod != "" {
		t.Fatalf("a third connection on a pod of cap 2: %+v, %v; want refused (capacity)", a, err)
	}
	t.Logf("the wait ended %v after the promoted replica's epoch began (asked for: %v)", time.Since(start).Round(time.Millisecond), longWait)
}

// Each condition of the early end, missing, leaves the promoted replica's
// wait at its full length, although every instance re-published.
func TestPromotedReplicaKeepsTheFullWait(t *testing.T) {
	for _, c := range []struct {
		name string
		// setup runs on the primary's beater after the epoch past its
		// wait was made, before the replica is acknowledged and promoted.
		setup func(t *testing.T, onP *beater)
		wait  int // the heartbeats' WaitReplicas on the promoted replica
	}{
		{"the trackers do not wait for the replicas", func(t *testing.T, onP *beater) {}, 0},
		{"one heartbeat in the old epoch did not wait", func(t *testing.T, onP *beater) {
			onP.wait = 0
			onP.beat("b", 0, time.Millisecond, "")
		}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			primary, replica := replicaPair(t)
			onP := &beater{t: t, s: store.NewStore(primary.Client(), ""), seq: map[string]uint64{}, wait: 1}
			if c.wait == 0 {
				onP.wait = 0
			}
			epochPastItsWait(t, onP, "a", "b")
			c.setup(t, onP)
			ack(t, primary)
			replica.Promote()
			onR := &beater{t: t, s: store.NewStore(replica.Client(), ""), seq: onP.seq, wait: c.wait}
			if res := onR.beat("a", 1, longWait, ""); !res.EpochCreated {
				t.Fatalf("a's first heartbeat on the promoted replica: %+v; want a new epoch", res)
			}
			if res := onR.beat("b", 0, longWait, ""); res.Recovering < longWait/2 {
				t.Fatalf("after every instance re-published: %+v; want the full wait", res)
			}
		})
	}
	t.Run("the old epoch was still in its wait", func(t *testing.T) {
		primary, replica := replicaPair(t)
		onP := &beater{t: t, s: store.NewStore(primary.Client(), ""), seq: map[string]uint64{}, wait: 1}
		onP.beat("a", 0, longWait, "") // never confirmed
		onP.beat("b", 0, longWait, "")
		ack(t, primary)
		replica.Promote()
		onR := &beater{t: t, s: store.NewStore(replica.Client(), ""), seq: onP.seq, wait: 1}
		onR.beat("a", 1, longWait, "")
		if res := onR.beat("b", 0, longWait, ""); res.Recovering < longWait/2 {
			t.Fatalf("after every instance re-published: %+v; want the full wait", res)
		}
	})
	t.Run("the heartbeat that made the epoch was stale", func(t *testing.T) {
		primary, replica := replicaPair(t)
		onP := &beater{t: t, s: store.NewStore(primary.Client(), ""), seq: map[string]uint64{}, wait: 1}
		epochPastItsWait(t, onP, "a", "b")
		ack(t, primary)
		replica.Promote()
		onR := store.NewStore(replica.Client(), "")
		// a heartbeat of a sent before its last one on the primary
		res, err := onR.Sync(context.Background(), store.SyncRequest{Fleet: "chat", Instance: "a", Lease: time.Hour,
			RecoveryWait: longWait, Seq: 1, WaitReplicas: 1})
		if err != nil || !res.Stale || !res.EpochCreated {
			t.Fatalf("a's late heartbeat on the promoted replica: %+v, %v; want a new epoch, stale", res, err)
		}
		bR := &beater{t: t, s: onR, seq: onP.seq, wait: 1}
		if res := bR.beat("b", 0, longWait, ""); res.Recovering < longWait/2 {
			t.Fatalf("after b re-published, a not (its heartbeat was stale): %+v; want the wait to go on", res)
		}
		if res := bR.beat("a", 1, longWait, ""); res.Recovering != 0 {
			t.Fatalf("after a re-published too: %+v; want the wait over", res)
		}
	})
	t.Run("the set of instances to wait for is lost", func(t *testing.T) {
		// Evicted (a volatile-* policy evicts keys with a TTL first),
		// expired or deleted: the count in the epoch hash is not lowered
		// by anyone, and the wait runs its full length.
		primary, replica := replicaPair(t)
		onP := &beater{t: t, s: store.NewStore(primary.Client(), ""), seq: map[string]uint64{}, wait: 1}
		epochPastItsWait(t, onP, "a", "b", "c")
		ack(t, primary)
		replica.Promote()
		onR := &beater{t: t, s: store.NewStore(replica.Client(), ""), seq: onP.seq, wait: 1}
		res := onR.beat("a", 1, longWait, "")
		if err := replica.Client().Del(context.Background(), onR.s.Keys("chat").Republish(res.Epoch)).Err(); err != nil {
			t.Fatal(err)
		}
		onR.beat("b", 0, longWait, "")
		if res := onR.beat("c", 0, longWait, ""); res.Recovering < longWait/2 {
			t.Fatalf("after every instance re-published, the set lost: %+v; want the full wait", res)
		}
	})
	t.Run("the trackers wait for fewer replicas than the primary has", func(t *testing.T) {
		// WAIT 1 with two replicas: the one promoted may lack grants the
		// other acknowledged, and instances whose join it lacks.
		primary, replica := replicaPair(t)
		redistest.StartReplica(t, primary)
		redistest.AwaitReplicas(t, primary, 2)
		onP := &beater{t: t, s: store.NewStore(primary.Client(), ""), seq: map[string]uint64{}, wait: 1}
		epochPastItsWait(t, onP, "a", "b")
		ack(t, primary)
		replica.Promote()
		onR := &beater{t: t, s: store.NewStore(replica.Client(), ""), seq: onP.seq, wait: 1}
		onR.beat("a", 1, longWait, "")
		if res := onR.beat("b", 0, longWait, ""); res.Recovering < longWait/2 {
			t.Fatalf("after every instance re-published: %+v; want the full wait", res)
		}
	})
	t.Run("a heartbeat that does not wait cancels it", func(t *testing.T) {
		primary, replica := replicaPair(t)
		onP := &beater{t: t, s: store.NewStore(primary.Client(), ""), seq: map[string]uint64{}, wait: 1}
		epochPastItsWait(t, onP, "a", "b", "c")
		ack(t, primary)
		replica.Promote()
		onR := &beater{t: t, s: store.NewStore(replica.Client(), ""), seq: onP.seq, wait: 1}
		onR.beat("a", 1, longWait, "")
		onR.wait = 0
		onR.beat("b", 0, longWait, "")
		onR.wait = 1 // b waits again (a restarted tracker): the early end stays off
		onR.beat("b", 0, longWait, "")
		if res := onR.beat("c", 0, longWait, ""); res.Recovering < longWait/2 {
			t.Fatalf("after every instance re-published, one without waiting: %+v; want the full wait", res)
		}
	})
}

// A primary restarted from its snapshot is a new process whose
// master_replid2 is its old replication id, as a promoted replica's is
// (Redis 7): still, it acknowledged nothing, and its wait is the full one.
func TestRestartFromDiskKeepsTheFullWait(t *testing.T) {
	primary, replica := replicaPair(t) // a replica, so that the primary's id is the one it keeps
	ctx := context.Background()
	onP := &beater{t: t, s: store.NewStore(primary.Client(), ""), seq: map[string]uint64{}, wait: 1}
	epochPastItsWait(t, onP, "a", "b")
	ack(t, primary)
	run, id := infoField(t, primary.Client(), "server", "run_id"), infoField(t, primary.Client(), "replication", "master_replid")
	primary.Save()
	replica.Kill()
	primary.RestartWithData()
	if r := infoField(t, primary.Client(), "server", "run_id"); r == run {
		t.Fatalf("run_id %s unchanged by a restart", r)
	}
	if id2 := infoField(t, primary.Client(), "replication", "master_replid2"); id2 == id {
		t.Logf("the restarted primary's master_replid2 is its old master_replid, as a promoted replica's would be")
	} else {
		t.Logf("this Redis does not keep a restarted primary's old id as master_replid2 (%q, was %q)", id2, id)
	}
	onP.s = store.NewStore(primary.Client(), "")
	if res := onP.beat("a", 1, longWait, ""); !res.EpochCreated {
		t.Fatalf("a's first heartbeat after the restart: %+v; want a new epoch", res)
	}
	if res := onP.beat("b", 0, longWait, ""); res.Recovering < longWait/2 {
		t.Fatalf("after every instance re-published: %+v; want the full wait", res)
	}
	if early := primary.Client().HGet(ctx, onP.s.Keys("chat").Epoch(), "early").Val(); early != "" {
		t.Fatalf("the restarted primary's epoch: early %q, want none", early)
	}
}

// A heartbeat that says its admissions wait for replicas works on every
// backend. Without the run check (miniredis, which has no INFO) no epoch is
// made over another process' data and the script reads no INFO
// replication: the epoch names no replication id, and nothing ends early.
func TestHeartbeatThatWaitsForReplicas(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
		ctx := context.Background()
		bt := &beater{t: t, s: s, seq: map[string]uint64{}, wait: 1}
		res := bt.beat("a", 0, longWait, "")
		if !res.EpochCreated || res.Recovering < longWait/2 {
			t.Fatalf("first heartbeat: %+v; want a new epoch in its wait", res)
		}
		e, err := b.Client.HGetAll(ctx, s.Keys("chat").Epoch()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if e["waited"] != "1" || e["early"] != "" {
			t.Fatalf("epoch %v: want waited 1 and no early end", e)
		}
		if b.Mini != nil && e["repl"] != "" {
			t.Fatalf("epoch %v on miniredis: want no replication id", e)
		}
		if b.Mini == nil && e["repl"] != infoField(t, b.Client, "replication", "master_replid") {
			t.Fatalf("epoch %v: want repl the server's master_replid", e)
		}
		bt.wait = 0
		bt.beat("b", 0, longWait, "")
		if w := b.Client.HGet(ctx, s.Keys("chat").Epoch(), "waited").Val(); w != "" {
			t.Fatalf("after a heartbeat that does not wait: waited %q, want none", w)
		}
	})
}
