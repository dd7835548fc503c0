package faults

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
)

// Split brain (issue 26, item 3; PROTOCOL.md, "Replication and
// failover"): a primary P with a replica R whose replication link runs
// through a proxy; trackers A and B both on P (each through its own
// proxy), churn through both, cap 2 on two backends. Then the partition
// {P, A} | {R, B}: the link proxy swallows R's link both ways, R is
// promoted by REPLICAOF NO ONE (as an operator, the majority's Sentinels
// or a Service following the master role would), and B's proxy is turned
// to R (a Service that follows the new master). A keeps talking to P, B
// to R; the churn goes on through both until R's new epoch grants and for
// splitChurn more. Unless splitOptions.busy, the partition comes after a
// churn whose connections all ended: the pods are empty on both sides,
// the case in which each side alone may fill the cap.

// splitChurn is how long the churn goes on after R's epoch grants: both
// primaries grant then, each blind to the other's grants.
const splitChurn = 4 * time.Second

// healChurn is how long the churn goes on after both gateways admit again
// once the partition healed.
const healChurn = 2 * time.Second

type splitOptions struct {
	expired string
	// wait: trackers admit only once a replica acknowledged
	// (--redis-wait-replicas 1, --redis-wait-timeout 50ms).
	wait bool
	// lease: P refuses writes without a replica (leaseArgs). Both: the
	// documented settings. R never has the lease: promoted, it has no
	// replica, and with the lease would refuse B every write, heartbeats
	// included; without it B's side runs as far as WAIT lets it, the
	// harder case for the cap.
	lease bool
	// busy: the partition comes during the churn, the pods full and the
	// trackers holding entitlements (the fallback then has slots to
	// admit into); otherwise after a churn whose connections all ended.
	busy bool
}

func (so splitOptions) String() string {
	switch {
	case so.wait && so.lease:
		if so.busy {
			return so.expired + ", documented settings (WAIT and write lease), partition under churn"
		}
		return so.expired + ", documented settings (WAIT and write lease)"
	case so.wait:
		return so.expired + ", WAIT without the write lease"
	case so.lease:
		return so.expired + ", write lease without WAIT"
	}
	return so.expired + ", neither WAIT nor write lease"
}

// The documented settings: waitArgs for the trackers, leaseArgs for the
// primary (min-replicas-max-lag: lag + 2 s below the instance TTL, 5 s,
// so that P refuses writes before R's recovery wait ends; PROTOCOL.md, the
// write lease's timing).
var (
	waitArgs  = []string{"--redis-wait-replicas", "1", "--redis-wait-timeout", "50ms"}
	leaseArgs = []string{"--min-replicas-to-write", "1", "--min-replicas-max-lag", "2"}
)

// requireWaitFlag skips a test of the documented settings when the
// tracker under test has no --redis-wait-replicas, except under CI=true,
// where it fails: CI must run it.
func requireWaitFlag(t *testing.T) {
	t.Helper()
	if trackerHasFlag("redis-wait-replicas") {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the tracker under test has no --redis-wait-replicas: CI must run the tests of the documented settings (merge branch wait)")
	}
	t.Skip("the tracker under test has no --redis-wait-replicas yet")
}

// splitRun is one split brain: the harness (A's proxy leads to P, B's to
// R), P, R, and the clients A admitted right after the partition.
type splitRun struct {
	so   splitOptions
	h    *harness
	p, r *redistest.Server
	held *conns
}

// splitBrain runs the scenario up to the end of the split churn.
func splitBrain(t *testing.T, so splitOptions) *splitRun {
	t.Helper()
	pArgs := dataNodeArgs
	var trackerArgs []string
	if so.lease {
		pArgs = append(append([]string(nil), dataNodeArgs...), leaseArgs...)
	}
	if so.wait {
		requireWaitFlag(t)
		trackerArgs = waitArgs
	}
	p := redistest.StartPort(t, freePort(t), pArgs...)
	link := startRedisProxy(t, p.Addr())
	t.Cleanup(link.close)
	r := redistest.StartPort(t, freePort(t), append(redistest.ReplicaOf(link.addr()), dataNodeArgs...)...)
	awaitReplicating(t, r, 20*time.Second)
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	h := newHarness(t, options{
		backends: 2, cap: 2, expired: so.expired, redis: p, rdb: rdb,
		trackers: []trackerOptions{{id: "A", args: trackerArgs}, {id: "B", args: trackerArgs}},
	})
	h.settle()
	// Churn, so that the trackers hold entitlements and have reused
	// slots; then every client closes and the counts drain to 0 on P
	// (and on R, which replicates them): the partition finds empty pods,
	// where each side alone may fill the cap.
	m := h.startMeter(6, 5, func() []*trackerProc { return h.trackers })
	await.Until(t, "churn admitting", 20*time.Second, func() (bool, string) { n := m.admitted(); return n >= 10, fmt.Sprint(n) })
	if !so.busy {
		m.end()
		h.awaitDrained(20 * time.Second)
	}
	before := h.perPod()

	// The partition; A admits clients that stay, through P, which still
	// accepts writes (with the write lease: until R's acknowledgements are
	// older than the lag) and R never learns of them (unless a replica had
	// to acknowledge them, which R no longer can); then R's promotion,
	// and B follows it. (R's REPLICAOF NO ONE closes its link, and the
	// proxy passes the close on: from then on P knows it has no replica,
	// earlier than in a real partition, where only the lag tells it.)
	partitioned := time.Now()
	link.blackhole()
	held := &conns{}
	t.Cleanup(held.closeAll)
	heldA := h.hold(held, h.tracker("A"), 2)
	if err := r.Do("REPLICAOF", "NO", "ONE"); err != nil {
		t.Fatalf("promote R: %v", err)
	}
	b := h.tracker("B")
	b.proxy.drop()
	b.proxy.retarget(r.Addr())
	b.proxy.heal()
	if !so.busy {
		m = h.startMeter(6, 6, func() []*trackerProc { return h.trackers })
	}

	granting := awaitGranting(t, r, h.o.instanceTTL*3+15*time.Second)
	time.Sleep(splitChurn) // the fault goes on: both sides churn
	ended := m.end()
	gap, from := m.longestGap()
	pr, _ := p.Replication()
	t.Logf("figures: case=split-brain(%s) max-per-pod=%s (before the partition %s) cap=%d held-through-A=%d/2 R-granting=+%.1fs churn-after-partition=%.1fs longest-without-admission=%.1fs (from +%.1fs) admitted=%d refused=%s P-role=%s",
		so, h.perPod(), before, h.o.cap, heldA, granting.Sub(partitioned).Seconds(), ended.Sub(partitioned).Seconds(),
		gap.Seconds(), from.Sub(partitioned).Seconds(), m.admitted(), h.stats.take(), pr.Role)
	return &splitRun{so: so, h: h, p: p, r: r, held: held}
}

// heal ends the partition as Sentinel would once P is reachable again:
// P becomes a replica of R (a full resync drops what P granted alone),
// and A follows R. Under churn through both, the cap must still hold, and
// both gateways admit again (R has a replica to acknowledge grants); once
// every client closed, the counts drain to 0.
func (sr *splitRun) heal(t *testing.T) {
	t.Helper()
	h := sr.h
	healed := time.Now()
	if err := sr.p.Do("REPLICAOF", "127.0.0.1", port(sr.r.Addr())); err != nil {
		t.Fatalf("demote P: %v", err)
	}
	a := h.tracker("A")
	a.proxy.drop()
	a.proxy.retarget(sr.r.Addr())
	a.proxy.heal()
	m := h.startMeter(6, 7, func() []*trackerProc { return h.trackers })
	awaitReplicating(t, sr.p, 20*time.Second)
	linked := time.Since(healed)
	first, all := m.awaitEach("admissions after the heal", h.trackers, healed, h.o.instanceTTL*3+15*time.Second)
	time.Sleep(healChurn) // churn on R with both trackers, A's old connections still open
	ended := m.end()
	gap, from := m.longestGap()
	t.Logf("figures: case=heal(%s) max-per-pod=%s cap=%d P-replicating=+%.1fs resumed=+%.1fs all-gateways=+%.1fs churn=%.1fs longest-without-admission=%.1fs (from +%.1fs) admitted=%d refused=%s",
		sr.so, h.perPod(), h.o.cap, linked.Seconds(), first.Sub(healed).Seconds(), all.Sub(healed).Seconds(), ended.Sub(healed).Seconds(),
		gap.Seconds(), from.Sub(healed).Seconds(), m.admitted(), h.stats.take())
	sr.held.closeAll()
	h.awaitDrained(30 * time.Second)
}

// TestSplitBrainUnsafe documents what split brain does without the
// documented settings: the cap breaks (4 on a cap of 2 in every mode, and
// with the write lease alone, in each run while this was written). It
// asserts nothing about the maximum (a breach depends on timing: asserting
// one could be flaky) and only logs it; skipped unless
// WSGATE_FAULTS_UNSAFE=1.
func TestSplitBrainUnsafe(t *testing.T) {
	if os.Getenv("WSGATE_FAULTS_UNSAFE") != "1" {
		t.Skip("documents a known breach of the cap (measured, not asserted); WSGATE_FAULTS_UNSAFE=1 runs it")
	}
	for name, so := range map[string]splitOptions{
		"reap": {expired: "reap"}, "keep": {expired: "keep"}, "kube": {expired: "kube"},
		// The write lease alone (PROTOCOL.md, WRITE_LEASE): A admits
		// through P before P refuses writes.
		"keep-lease-only": {expired: "keep", lease: true},
		// reap with the documented settings: R reaps A, cut off from it,
		// after one lease, whatever Redis does (PROTOCOL.md); under churn,
		// so that A holds connections the fallback admitted.
		"reap-documented": {expired: "reap", wait: true, lease: true, busy: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if so.wait && !trackerHasFlag("redis-wait-replicas") {
				t.Skip("the tracker under test has no --redis-wait-replicas yet")
			}
			h := splitBrain(t, so).h
			t.Logf("split brain, %s: max %d on a cap of %d", so, h.maxHeld(), h.o.cap)
		})
	}
}

// TestSplitBrainDocumented: with the documented settings (admissions
// acknowledged by the replica, P's write lease), split brain keeps the cap
// in keep and kube (PROTOCOL.md, "Replication and failover"; kube without
// a scaler: no tracker reaps, and the scaler would reap only an instance
// whose pod Kubernetes deleted, which none is here). reap cannot keep it
// under split brain with any setting (R reaps A, cut off from it): it runs
// only in TestSplitBrainUnsafe. Each case then heals the partition (P
// rejoins as R's replica, A follows R) and asserts the cap through that
// too, that both gateways admit again, and that the counts drain.
func TestSplitBrainDocumented(t *testing.T) {
	requireWaitFlag(t)
	for name, so := range map[string]splitOptions{
		"keep": {expired: "keep", wait: true, lease: true},
		"kube": {expired: "kube", wait: true, lease: true},
		// WAIT alone keeps the cap too (the model's WAIT_ADMIT); the lease
		// only makes A's refusals quicker.
		"keep-wait-only": {expired: "keep", wait: true},
		"keep-busy":      {expired: "keep", wait: true, lease: true, busy: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sr := splitBrain(t, so)
			sr.h.checkCap("split brain, " + so.String())
			sr.heal(t)
			sr.h.checkCap("split brain healed, " + so.String())
		})
	}
}
