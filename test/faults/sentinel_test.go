package faults

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
)

// Sentinel failovers through real processes (issue 26, item 3): a primary,
// one or two replicas and three Sentinels (`redis-server --sentinel`,
// quorum 2, down-after 2 s), three `wsgate tracker` processes on
// --redis-master-name with --redis-addr listing the Sentinels, two
// backends of cap 2, churn through every gateway. Each test asserts the
// most any backend ever held (its own count) and that admissions resume
// after the failover, and how long the new primary's recovery wait lasted:
// a whole instance TTL when the trackers do not wait for the replicas, and
// under the documented settings an early end within 2 heartbeats (and
// earlyMargin) of the moment the new primary took writes (PROTOCOL.md,
// "Ending the wait early after a failover"). Each logs one "figures:"
// line: how long the Sentinels took to agree on the new primary
// (detection), the old node's return as a replica (restarted, rejoined),
// until the new primary's epoch granted (recovered; the wait after the
// switch and after the new primary took writes), until the first
// admission after that (first-redis-admission) and through every gateway,
// the longest stretch without a single admission, in the whole churn and
// per failover, the claim of issue 26 (detection + 2 heartbeats) against
// both, and the clients' refusals by reason.

const (
	// masterName is the Sentinels' name of the primary.
	masterName = "wsgate-primary"
	// sentinelDownAfter is down-after-milliseconds.
	sentinelDownAfter = 2 * time.Second
	// sentinelElection is what the Sentinels take beyond down-after until
	// every one of them names the new primary: their agreement on ODOWN
	// (they ask each other every second), the vote, the promotion and its
	// announcement. Measured 0.5–1.3 s on an idle machine.
	sentinelElection = 3 * time.Second
	// busyMargin is what a machine shared by several test runs (2 cores,
	// the race detector, every test of the package at once) adds to the
	// processes' timers and to the tests' polls: ticks run late, a
	// tracker's heartbeat waits for the CPU.
	busyMargin = 5 * time.Second
	// earlyMargin is what the tests allow beyond 2 heartbeats for a
	// recovery wait that ends early (PROTOCOL.md, "Ending the wait early
	// after a failover"): the trackers' Sentinel clients reconnecting, a
	// heartbeat tick late on a busy machine, the test's 50 ms poll.
	// Measured (heartbeat 1 s): the wait ended 0.6–1.0 s after the new
	// primary took writes, idle and beside stress-ng, i.e. within the 2
	// heartbeats.
	earlyMargin = 1500 * time.Millisecond
)

// failoverBound is how long after the fault admissions must resume, and
// the longest stretch without an admission the tests accept, when the
// recovery wait cannot end early (trackers without --redis-wait-replicas):
// detection (down-after and the election), the trackers' next heartbeat
// on the new primary (it makes the new epoch), the epoch's whole recovery
// wait (one instance TTL), the heartbeat that confirms it, and a busy
// machine.
func failoverBound(hb, ttl time.Duration) time.Duration {
	return sentinelDownAfter + sentinelElection + hb + ttl + hb + busyMargin
}

// earlyEndBound is how long after the new primary takes writes its
// recovery wait may last when it ends early: the first heartbeat on it
// makes the new epoch (within one heartbeat), every other tracker's next
// one re-publishes its instance (within one more), and earlyMargin.
func earlyEndBound(hb time.Duration) time.Duration {
	return 2*hb + earlyMargin
}

type sentinelOptions struct {
	replicas int // default 1
	// linkProxy puts a proxy (sentinelSystem.link) on the first replica's
	// replication link, so that a test can stall it.
	linkProxy bool
	// documented runs the settings that keep the cap under split brain
	// (documentedArgs): trackers whose admissions a replica must
	// acknowledge, and on every data node a write lease.
	documented bool
	// failoverTimeout is the Sentinels' failover-timeout (default 10s).
	// It is also how long they let a replica replicate from another
	// address than the primary's (the link proxy's) before they point it
	// at the primary itself (+fix-slave-config).
	failoverTimeout time.Duration
}

// sentinelSystem is a harness whose Redis is a primary with replicas
// watched by Sentinels.
type sentinelSystem struct {
	*harness
	nodes     []*redistest.Server // nodes[0] the first primary
	link      *redisProxy         // the first replica's link (sentinelOptions.linkProxy)
	sentinels []*redistest.Sentinel
}

// dataNodeArgs start every data node: a full sync at once (the diskless
// sync otherwise waits 5 s for more replicas).
var dataNodeArgs = []string{"--repl-diskless-sync-delay", "0"}

func newSentinelSystem(t *testing.T, so sentinelOptions) *sentinelSystem {
	t.Helper()
	if so.replicas == 0 {
		so.replicas = 1
	}
	if so.failoverTimeout == 0 {
		so.failoverTimeout = 10 * time.Second
	}
	s := &sentinelSystem{}
	nodeArgs := dataNodeArgs
	var trackerArgs []string
	if so.documented {
		requireWaitFlag(t)
		nodeArgs = append(append([]string(nil), dataNodeArgs...), leaseArgs...)
		trackerArgs = waitArgs
	}
	p := redistest.StartPort(t, freePort(t), nodeArgs...)
	s.nodes = append(s.nodes, p)
	for i := range so.replicas {
		up := p.Addr()
		if i == 0 && so.linkProxy {
			s.link = startRedisProxy(t, p.Addr())
			t.Cleanup(s.link.close)
			up = s.link.addr()
		}
		s.nodes = append(s.nodes, redistest.StartPort(t, freePort(t), append(redistest.ReplicaOf(up), nodeArgs...)...))
	}
	for _, r := range s.nodes[1:] {
		awaitReplicating(t, r, 20*time.Second)
	}
	var addrs []string
	for range 3 {
		sn := redistest.StartSentinel(t, freePort(t), redistest.SentinelConfig{
			MasterName: masterName, MasterAddr: p.Addr(), Quorum: 2,
			DownAfter: sentinelDownAfter, FailoverTimeout: so.failoverTimeout,
		})
		s.sentinels = append(s.sentinels, sn)
		addrs = append(addrs, sn.Addr())
	}
	s.awaitSentinels(t, p.Addr(), so.replicas, 30*time.Second)
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: masterName, SentinelAddrs: addrs, MaxRetries: -1, DialTimeout: time.Second})
	args := append([]string{"--redis-addr", strings.Join(addrs, ","), "--redis-master-name", masterName}, trackerArgs...)
	s.harness = newHarness(t, options{
		backends: 2, cap: 2, redis: p, rdb: rdb,
		trackers: []trackerOptions{{id: "A", args: args}, {id: "B", args: args}, {id: "C", args: args}},
	})
	// Registered after the harness' cleanup, so it runs first: the
	// Sentinels' view of a failing test, while they still run.
	t.Cleanup(func() {
		if t.Failed() {
			for i, sn := range s.sentinels {
				t.Logf("sentinel %d log (last lines):\n%s", i, sn.LogTail(30))
			}
		}
	})
	s.settle()
	return s
}

// awaitReplicating waits until r is a replica whose link to its primary is
// up (the initial sync done).
func awaitReplicating(t *testing.T, r *redistest.Server, within time.Duration) {
	t.Helper()
	await.Until(t, r.Addr()+" replicating", within, func() (bool, string) {
		rep, err := r.Replication()
		return err == nil && rep.Role == "slave" && rep.LinkUp, fmt.Sprintf("%+v %v", rep, err)
	})
}

// awaitSentinels waits until every Sentinel names master as the primary,
// knows the two others (a failover needs a majority's votes) and the
// replicas, up: before that, a fault would find no one to fail over to.
func (s *sentinelSystem) awaitSentinels(t *testing.T, master string, replicas int, within time.Duration) {
	t.Helper()
	await.Until(t, "Sentinels agree on "+master, within, func() (bool, string) {
		var views []string
		ok := true
		for _, sn := range s.sentinels {
			v, err := sn.View(masterName)
			ok = ok && err == nil && v.Master == master && v.Others == len(s.sentinels)-1 && v.Replicas >= replicas
			views = append(views, fmt.Sprintf("%+v %v", v, err))
		}
		return ok, strings.Join(views, "; ")
	})
}

// awaitSwitch waits until every Sentinel names another primary than old,
// the same one, and returns that node.
func (s *sentinelSystem) awaitSwitch(t *testing.T, old string, within time.Duration) *redistest.Server {
	t.Helper()
	var master string
	await.Until(t, "Sentinels fail over from "+old, within, func() (bool, string) {
		master = ""
		var views []string
		for _, sn := range s.sentinels {
			v, err := sn.View(masterName)
			views = append(views, fmt.Sprintf("%s %v", v.Master, err))
			if err != nil || v.Master == old || (master != "" && v.Master != master) {
				return false, strings.Join(views, "; ")
			}
			master = v.Master
		}
		return true, master
	})
	for _, n := range s.nodes {
		if n.Addr() == master {
			return n
		}
	}
	t.Fatalf("Sentinels promoted %s, no node of the test", master)
	return nil
}

// awaitGranting waits until node's epoch for the fleet grants (the
// trackers have made a new epoch on it and its recovery wait is over).
func awaitGranting(t *testing.T, node *redistest.Server, within time.Duration) time.Time {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: node.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	st := store.NewStore(c, "wsgate")
	for {
		left, err := st.Recovery(ctx, fleet)
		if err == nil && left == 0 {
			return time.Now()
		}
		if ctx.Err() != nil {
			t.Fatalf("%s's epoch not granting within %s (last: %v left, %v)", node.Addr(), within, left, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// failoverFigures is what one failover cost, each figure from the fault.
type failoverFigures struct {
	fault time.Time
	hb    time.Duration // the trackers' heartbeat
	// detection: until every Sentinel named the new primary (the switch).
	detection time.Duration
	// restarted, rejoined (the documented settings' cases; 0 otherwise):
	// until the old primary was restarted or continued, and until it
	// was a replica of the new primary with its link up. With the write
	// lease on every node, the new primary takes writes, heartbeats
	// included, only from then on.
	restarted, rejoined time.Duration
	// recovered: until the new primary's epoch granted (its recovery
	// wait over, read from it with store.Recovery).
	recovered time.Duration
	// resumed: until the first admission after that. The new primary
	// grants nothing before, so it is the first admission through Redis
	// since the fault; the fallback's (share) can come earlier, from what
	// an instance held before. allResumed: until every gateway had one.
	resumed, allResumed time.Duration
	// gap is the longest stretch without an admission from the fault to
	// the first admission through Redis after it (admissions of the
	// fallback, share, may come in between).
	gap time.Duration
}

// writable is when the new primary took writes: at the switch, or once
// the old node rejoined as its replica (its write lease needs one).
func (f failoverFigures) writable() time.Duration { return max(f.detection, f.rejoined) }

func (f failoverFigures) String() string {
	s := fmt.Sprintf("detection=%.1fs", f.detection.Seconds())
	if f.rejoined > 0 {
		s += fmt.Sprintf(" restarted=%.1fs rejoined-as-replica=%.1fs", f.restarted.Seconds(), f.rejoined.Seconds())
	}
	s += fmt.Sprintf(" recovered=%.1fs (wait after the switch %.1fs, after the new primary took writes %.1fs) first-redis-admission=%.1fs all-gateways=%.1fs longest-without-admission=%.1fs",
		f.recovered.Seconds(), (f.recovered - f.detection).Seconds(), (f.recovered - f.writable()).Seconds(), f.resumed.Seconds(), f.allResumed.Seconds(), f.gap.Seconds())
	// Issue 26's claim: the longest stretch without an admission after a
	// failover at most detection + 2 heartbeats. Logged, not asserted:
	// without WAIT the wait lasts an instance TTL, and under the
	// documented settings the new primary takes writes only once a
	// replica is back. Logged for the stretch and for the first admission
	// through Redis: the stretch can be shorter than that, when the
	// fallback (share) admitted into what an instance held after the
	// fault.
	claim := f.detection + 2*f.hb
	verdict := func(d time.Duration) string {
		if d > claim {
			return "exceeded"
		}
		return "holds"
	}
	return s + fmt.Sprintf(" detection+2hb=%.1fs(stretch %s, first Redis admission %s)", claim.Seconds(), verdict(f.gap), verdict(f.resumed))
}

// failover applies fault to the current primary old, waits for the
// Sentinels to promote another node, for its epoch to grant, and for an
// admission through every gateway after that (within failoverBound of the
// fault), and returns the new primary and the figures.
func (s *sentinelSystem) failover(t *testing.T, m *meter, old *redistest.Server, fault func()) (*redistest.Server, failoverFigures) {
	t.Helper()
	bound := failoverBound(s.o.heartbeat, s.o.instanceTTL)
	f := failoverFigures{fault: time.Now(), hb: s.o.heartbeat}
	fault()
	promoted := s.awaitSwitch(t, old.Addr(), bound)
	f.detection = time.Since(f.fault)
	s.awaitResumed(t, m, promoted, &f, bound)
	// Without --redis-wait-replicas the new primary may lack grants
	// (asynchronous replication), so its wait must not end early: a whole
	// instance TTL from the new epoch, made after the promotion. The
	// test sees the switch once the last Sentinel names the new primary,
	// which may learn of it up to a hello period (2 s) after the
	// promotion.
	if wait, least := f.recovered-f.detection, s.o.instanceTTL-2*time.Second; wait < least {
		t.Errorf("the new primary's recovery wait ended %.1fs after the switch, before an instance TTL (%s, less 2 s), with trackers that do not wait for the replicas (%s)",
			wait.Seconds(), s.o.instanceTTL, f)
	}
	return promoted, f
}

// awaitResumed waits until promoted's epoch grants and every gateway
// admitted after that, all within bound of the fault, and fills in f.
func (s *sentinelSystem) awaitResumed(t *testing.T, m *meter, promoted *redistest.Server, f *failoverFigures, bound time.Duration) {
	t.Helper()
	granting := awaitGranting(t, promoted, bound-time.Since(f.fault))
	f.recovered = granting.Sub(f.fault)
	first, all := m.awaitEach("admissions after the failover", s.trackers, granting, bound-time.Since(f.fault))
	f.resumed, f.allResumed = first.Sub(f.fault), all.Sub(f.fault)
	f.gap = m.longestGapIn(f.fault, first)
}

// documentedBound is how long after the fault admissions must resume
// under the documented settings: detection, the old node's return as a
// replica of the new primary (sentinelRejoin, after the Sentinels'
// switch), the early end of the wait, and a busy machine.
func documentedBound(hb time.Duration) time.Duration {
	return sentinelDownAfter + sentinelElection + sentinelRejoin + earlyEndBound(hb) + busyMargin
}

// sentinelRejoin is how long an old primary brought back (restarted
// empty, or continued) takes to be a replica of the new primary when the
// Sentinels make it one: they let a node they know as a replica report
// itself a primary for sentinelConvert before they send it REPLICAOF, and
// see it only at their next INFO (every second while it was down); then
// the full sync of a small data set. Measured 10.0–11.0 s from the restart
// or SIGCONT, idle and beside stress-ng.
const sentinelRejoin = sentinelConvert + 4*time.Second

// documentedFailover is a failover under the documented settings: fault
// on the primary old, and once the Sentinels promoted its replica, back
// brings old back (a restart, SIGCONT) as the platform would. It waits
// until old is a replica of the new primary (whose write lease needs
// one), until the new primary's epoch grants and every gateway admitted
// again, and checks that the recovery wait ended early: within
// earlyEndBound of the moment the new primary took writes.
func (s *sentinelSystem) documentedFailover(t *testing.T, m *meter, old *redistest.Server, fault, back func()) (*redistest.Server, failoverFigures) {
	t.Helper()
	bound := documentedBound(s.o.heartbeat)
	f := failoverFigures{fault: time.Now(), hb: s.o.heartbeat}
	fault()
	promoted := s.awaitSwitch(t, old.Addr(), bound)
	f.detection = time.Since(f.fault)
	back()
	f.restarted = time.Since(f.fault)
	await.Until(t, "the old primary a replica of the new one", bound-time.Since(f.fault), func() (bool, string) {
		r, err := old.Replication()
		return err == nil && r.Role == "slave" && r.LinkUp && strconv.Itoa(r.MasterPort) == port(promoted.Addr()), fmt.Sprintf("%+v %v", r, err)
	})
	f.rejoined = time.Since(f.fault)
	s.awaitResumed(t, m, promoted, &f, bound)
	if wait, b := f.recovered-f.writable(), earlyEndBound(s.o.heartbeat); wait > b {
		t.Errorf("the new primary's recovery wait lasted %.1fs after it took writes (%.1fs after the switch), more than 2 heartbeats + %s: it did not end early (%s)",
			wait.Seconds(), (f.recovered - f.detection).Seconds(), earlyMargin, f)
	}
	if b := documentedGapBound(s.o.heartbeat, f); f.resumed > b {
		t.Errorf("the first admission through Redis came %.1fs after the fault, more than %.1fs (the new primary took writes after %.1fs, then 2 heartbeats + %s, and a heartbeat of churn) (%s)",
			f.resumed.Seconds(), b.Seconds(), f.writable().Seconds(), earlyMargin, f)
	}
	return promoted, f
}

// finish ends the churn, checks the cap and the longest stretch without
// an admission (at most bound), logs the figures, and checks that the
// system admits and drains on the new primary (every count released
// there).
func (s *sentinelSystem) finish(t *testing.T, name string, m *meter, bound time.Duration, figures ...failoverFigures) {
	t.Helper()
	ended := m.end()
	gap, from := m.longestGap()
	var fs []string
	for _, f := range figures {
		fs = append(fs, f.String())
	}
	at := from.Sub(m.start)
	if len(figures) > 0 {
		at = from.Sub(figures[0].fault)
	}
	t.Logf("figures: case=%s max-per-pod=%s cap=%d longest-without-admission=%.1fs (from %+.1fs of the fault; %.1fs of churn) admitted=%d refused=%s %s",
		name, s.perPod(), s.o.cap, gap.Seconds(), at.Seconds(), ended.Sub(m.start).Seconds(), m.admitted(), s.stats.take(), strings.Join(fs, " | "))
	s.checkCap(name)
	if gap > bound {
		t.Errorf("%s: %.1fs without an admission, more than the bound %s", name, gap.Seconds(), bound)
	}
	s.awaitAdmitting(bound)
	s.awaitDrained(20 * time.Second)
}

// startChurn starts the meter through every gateway and waits for its
// first admissions, so that the fault hits a system in use.
func (s *sentinelSystem) startChurn(t *testing.T, seed uint64) *meter {
	t.Helper()
	m := s.startMeter(6, seed, func() []*trackerProc { return s.trackers })
	await.Until(t, "churn admitting", 20*time.Second, func() (bool, string) { n := m.admitted(); return n >= 10, fmt.Sprint(n) })
	return m
}

// The Sentinel tests, and the split-brain tests, do not run in parallel with
// the other fault tests: each runs some fifteen processes (Redis nodes,
// Sentinels, trackers, gateways, backends), and beside the timing-sensitive
// tests (TestE_TwoEmptyRestarts' heartbeats between two restarts) on two
// busy cores they starved them. Go runs them first, one at a time.

// TestSentinelFailoverKill: the primary is SIGKILLed under churn.
func TestSentinelFailoverKill(t *testing.T) {
	s := newSentinelSystem(t, sentinelOptions{})
	m := s.startChurn(t, 1)
	_, f := s.failover(t, m, s.nodes[0], s.nodes[0].Kill)
	s.finish(t, "sentinel-kill", m, failoverBound(s.o.heartbeat, s.o.instanceTTL), f)
}

// TestSentinelFailoverStop: the primary is SIGSTOPped (a frozen host: its
// sockets stay open) under churn; once the Sentinels promoted the replica
// and admissions resumed, it is continued, and must come back as a replica
// of the new primary (the Sentinels reconfigure it) while the churn goes
// on: no tracker may admit through it meanwhile.
func TestSentinelFailoverStop(t *testing.T) {
	s := newSentinelSystem(t, sentinelOptions{})
	m := s.startChurn(t, 2)
	old := s.nodes[0]
	promoted, f := s.failover(t, m, old, old.Stop)
	old.Cont()
	continued := time.Now()
	await.Until(t, "old primary back as a replica of the new one", 60*time.Second, func() (bool, string) {
		r, err := old.Replication()
		return err == nil && r.Role == "slave" && strconv.Itoa(r.MasterPort) == port(promoted.Addr()), fmt.Sprintf("%+v %v", r, err)
	})
	t.Logf("old primary a replica %.1fs after SIGCONT", time.Since(continued).Seconds())
	s.finish(t, "sentinel-stop", m, failoverBound(s.o.heartbeat, s.o.instanceTTL), f)
}

// TestSentinelFailoverStalledLink: the replica's replication link stalls
// (a proxy on it swallows everything both ways) for 3 s under churn, then
// the primary is SIGKILLed: the replica promoted lacks the writes of those
// 3 s (the admissions and heartbeats of every tracker).
func TestSentinelFailoverStalledLink(t *testing.T) {
	// failover-timeout 60 s: the Sentinels would otherwise point the
	// replica at the primary itself, past the proxy, after 10 s.
	s := newSentinelSystem(t, sentinelOptions{linkProxy: true, failoverTimeout: time.Minute})
	p, r := s.nodes[0], s.nodes[1]
	if rep, err := r.Replication(); err != nil || strconv.Itoa(rep.MasterPort) != port(s.link.addr()) || !rep.LinkUp {
		t.Fatalf("the replica no longer replicates through the link proxy %s: %+v %v", s.link.addr(), rep, err)
	}
	m := s.startChurn(t, 3)
	const stall = 3 * time.Second
	s.link.blackhole()
	time.Sleep(stall) // the fault: writes the replica does not receive
	pr, err1 := p.Replication()
	rr, err2 := r.Replication()
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if pr.Offset <= rr.Offset {
		t.Fatalf("the replica has the primary's offset %d (its own %d) after a %s stall: nothing to lose", pr.Offset, rr.Offset, stall)
	}
	t.Logf("replica %d bytes of replication stream behind the primary at the kill", pr.Offset-rr.Offset)
	_, f := s.failover(t, m, p, p.Kill)
	s.finish(t, "sentinel-stalled-link", m, failoverBound(s.o.heartbeat, s.o.instanceTTL), f)
}

// TestSentinelFailoverTwice: two failovers in a row: the primary is
// SIGKILLed, one of two replicas promoted and the other reconfigured to
// replicate from it; once admissions resumed and the Sentinels see that
// replica, the new primary is SIGKILLed too.
func TestSentinelFailoverTwice(t *testing.T) {
	s := newSentinelSystem(t, sentinelOptions{replicas: 2})
	m := s.startChurn(t, 4)
	first, f1 := s.failover(t, m, s.nodes[0], s.nodes[0].Kill)
	var rest *redistest.Server
	for _, n := range s.nodes[1:] {
		if n != first {
			rest = n
		}
	}
	await.Until(t, "the other replica replicating from the new primary", 30*time.Second, func() (bool, string) {
		r, err := rest.Replication()
		return err == nil && r.Role == "slave" && r.LinkUp && strconv.Itoa(r.MasterPort) == port(first.Addr()), fmt.Sprintf("%+v %v", r, err)
	})
	s.awaitSentinels(t, first.Addr(), 1, 30*time.Second)
	second, f2 := s.failover(t, m, first, first.Kill)
	if second != rest {
		t.Fatalf("second failover promoted %s, want %s", second.Addr(), rest.Addr())
	}
	s.finish(t, "sentinel-twice", m, failoverBound(s.o.heartbeat, s.o.instanceTTL), f1, f2)
}

// sentinelConvert is how long the Sentinels let a node they know as a
// replica report itself a primary before they make it a replica again
// (4 times their 2 s publish period, in Redis 7).
const sentinelConvert = 8 * time.Second

// The documented settings (admissions acknowledged by a replica, a write
// lease on every node): the promoted replica has no replica of its own
// until the old primary rejoins as one, so it refuses every write
// (heartbeats too) until then, and nothing is admitted through Redis
// meanwhile. Each test measures the switch, the rejoin, and the early end
// of the recovery wait after it (asserted: within 2 heartbeats +
// earlyMargin of the moment the new primary took writes); the longest
// stretch without an admission must end within earlyEndBound (and a
// heartbeat of churn) of that moment too.

// TestSentinelFailoverDocumented: the primary is SIGKILLed and restarted
// empty on its address (a pod without persistence) once the Sentinels
// switched: it comes up a primary, and the Sentinels make it a replica of
// the new one after sentinelConvert.
func TestSentinelFailoverDocumented(t *testing.T) {
	s := newSentinelSystem(t, sentinelOptions{documented: true})
	m := s.startChurn(t, 8)
	p := s.nodes[0]
	_, f := s.documentedFailover(t, m, p, p.Kill, p.Restart)
	s.finish(t, "sentinel-kill-documented", m, documentedGapBound(s.o.heartbeat, f), f)
}

// TestSentinelFailoverDocumentedReplicaOf: as TestSentinelFailoverDocumented,
// but the restarted node asks for the primary the Sentinels name and
// replicates from it at once (REPLICAOF right after its start: what the
// start script of a Sentinel chart's pod does, e.g. Bitnami's), instead of
// waiting to be converted: the failover's cost without sentinelConvert.
func TestSentinelFailoverDocumentedReplicaOf(t *testing.T) {
	s := newSentinelSystem(t, sentinelOptions{documented: true})
	m := s.startChurn(t, 10)
	p := s.nodes[0]
	_, f := s.documentedFailover(t, m, p, p.Kill, func() {
		v, err := s.sentinels[0].View(masterName)
		if err != nil {
			t.Fatalf("asking a Sentinel for the primary: %v", err)
		}
		p.Restart()
		host, pt, _ := net.SplitHostPort(v.Master)
		if err := p.Do("REPLICAOF", host, pt); err != nil {
			t.Fatalf("REPLICAOF %s on the restarted node: %v", v.Master, err)
		}
	})
	s.finish(t, "sentinel-kill-documented-replicaof", m, documentedGapBound(s.o.heartbeat, f), f)
}

// TestSentinelFailoverStopDocumented: the primary is SIGSTOPped (a frozen
// host), and continued once the Sentinels switched: it comes back a
// primary with its old data, refuses writes (its lease: no replica), and
// the Sentinels make it a replica of the new primary.
func TestSentinelFailoverStopDocumented(t *testing.T) {
	s := newSentinelSystem(t, sentinelOptions{documented: true})
	m := s.startChurn(t, 9)
	p := s.nodes[0]
	_, f := s.documentedFailover(t, m, p, p.Stop, p.Cont)
	s.finish(t, "sentinel-stop-documented", m, documentedGapBound(s.o.heartbeat, f), f)
}

// documentedGapBound is the longest stretch without an admission a
// documented-settings failover may cause: until the new primary took
// writes (measured), its early end, and a heartbeat for the churn's next
// admission through each gateway on a busy machine.
func documentedGapBound(hb time.Duration, f failoverFigures) time.Duration {
	return f.writable() + earlyEndBound(hb) + hb
}

// port is the port of "host:port".
func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
