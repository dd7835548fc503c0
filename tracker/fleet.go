package tracker

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// gateAll is the weight a heartbeat takes of fleet.gate: all of it.
const gateAll = 1 << 30

type rejKey struct {
	reason store.Reason
	bucket int64
}

// fleet is one fleet's state on this instance.
//
// Locks, in the only order in which they nest (each one is taken after
// the ones before it, never before them):
//
//	gate -> f.mu        an admission or a release holds one unit of gate
//	                    across its script and its local record; a heartbeat,
//	                    Leave, all of it across its snapshot, call and
//	                    result (syncCall). Nothing waits for gate while
//	                    holding f.mu.
//	t.applyMu -> f.mu   retire reads f under applyMu. Apply takes no f.mu
//	                    under it; applyMu and gate never nest.
//	f.mu -> leaves      under f.mu only t.byConn, t.idSeq, the metrics, the
//	                    logger, f.stalled (guarded by f.mu itself) and
//	                    f.fam.mu (family.go).
//
//	gate -> batcher.mu  an admission holds its unit while admits.do queues
//	                    and sends it; the sender (sendAdmits) takes no gate.
//
// A batcher's mutex (batch.go) never nests with f.mu, either way: the
// batchers call send with their mutex released, sendAdmits takes the
// releases (take, finish) with f.mu released, and Release posts after
// unlocking f.mu (and the gate). No two fleets' locks are ever held
// together (a fleet's groups are fleets here: code that visits every
// group of a fleet locks one at a time), and nothing takes gate or
// applyMu under a batcher's mutex.
type fleet struct {
	// name is the group's: the name Redis knows it by (fleets.GroupName),
	// the fleet's own for group 0. label is the fleet's, for metrics and
	// answers; group is its number, fam the fleet it is a group of.
	name, label string
	group       int
	fam         *family
	// cfg is replaced whole by Apply; read it through conf. Its Pods are
	// the group's only (groupConf).
	cfg atomic.Pointer[fleets.Fleet]
	// gone: the fleet is retiring and this group left Redis (retire); it
	// heartbeats no more.
	gone      atomic.Bool
	podsDirty atomic.Bool // its static pods changed: the next heartbeat writes them

	// gate orders admissions against heartbeats: an admission holds one
	// unit from its script to its local record, a heartbeat holds all of
	// them while it publishes the local truth. Without it a heartbeat could
	// overwrite a slot an admission had just been granted and not yet
	// recorded: the instance would hold a connection Redis does not count
	// for it. Releases hold it the same way (see Release). A semaphore, not
	// an RWMutex, so that an admission waits for a heartbeat stuck on a slow
	// Redis only within its own deadline.
	gate *semaphore.Weighted
	// admits sends the admissions that hold the gate, releases the releases
	// queued since the last call: each as few script calls as they can
	// share (batch.go).
	admits   *batcher[struct{}, admission]
	releases *batcher[releaseReq, struct{}]

	mu sync.Mutex // guards everything below
	// noReuse is set by tests only (export_test.go): every admission asks
	// Redis. A field under the lock the reuse path holds already, not an
	// atomic load per admission.
	noReuse bool
	conns   map[string]*conn
	live    map[string]int // pod -> live connections of this instance
	est     map[string]int // pod -> established connections of this instance
	// ent is this instance's entitlement per pod: never more than Redis
	// counts for it in inst:<id> (PROTOCOL.md, invariant L). The share
	// fallback admits only into ent - held.
	ent map[string]int
	// spare counts, per pod, the queued releases whose slots are still in
	// ent - held: freed here, still counted for this instance in Redis. An
	// admission may take one back instead of asking Redis (reuse); the
	// release leaving the queue takes it out of ent. Only min(spare,
	// ent - held) is ever used: the rest went to the share fallback or to
	// an adopted connection.
	spare map[string]int
	rej   map[rejKey]int64
	// degraded: a Redis call failed; fenced: Redis refused to decide
	// (another epoch, or this instance's lease ended). Either way
	// admissions leave Redis alone until the next heartbeat succeeds.
	degraded bool
	fenced   bool
	fencedBy store.Fence // why it is fenced
	// inGauge: degraded as the fleet's fallback_active gauge counts it
	// (setDegradedLocked).
	inGauge bool
	epoch   string
	// epochSeen is when this instance first saw epoch (its own clock), and
	// granting whether Redis said that its recovery wait is over.
	epochSeen time.Time
	granting  bool
	// seq numbers this instance's heartbeats and releases, so that Redis
	// ignores one that arrives after a later heartbeat (sync.lua).
	seq uint64
	// localLeaseUntil is the end of this instance's local lease, by its own
	// monotonic clock: InstanceTTL from the moment its last successful
	// heartbeat was sent, before Redis stamped it (not the Redis lease, nor
	// a connection's). Past it, the entitlement may have been given away.
	localLeaseUntil time.Time
	// clock is the tracker's clock (Tracker.now), set with localLeaseUntil:
	// redisUsableLocked judges the local lease by it.
	clock func() time.Time
	view  view
	// redisSaid describes the last failed Redis call (store.DescribeRedisError),
	// for logs and readiness; redisWarned is when it was last warned of.
	redisSaid   string
	redisWarned time.Time
	// lastHeartbeat is when the last heartbeat succeeded (wall clock, for
	// /metrics and /status; zero before the first), and recoveryEnd when
	// the epoch's recovery wait ends as that heartbeat saw it (this
	// instance's clock: Redis' remaining wait, or a full instance TTL
	// since it first saw the epoch, whichever is later).
	lastHeartbeat time.Time
	recoveryEnd   time.Time
	// uncounted is how many of conns are (conn.uncounted).
	uncounted int
	// stalled watches the other instances' seqs; toReap names the ones
	// the next heartbeat asks Redis to reap.
	stalled *store.Stalled
	toReap  []string

	// inherited are connections a previous run of this instance left in
	// Redis (the tracker restarted, its Envoy kept its connections). They
	// stay counted until inheritUntil, one lease, unless Envoy's access log
	// names them first (Adopt).
	inheritChecked bool
	inherited      map[string]int
	inheritUntil   time.Time

	// The delta heartbeat (PROTOCOL.md, "Delta heartbeats"). delta: the
	// next heartbeat may send only what moved, since the last one was
	// acknowledged and no call of unknown outcome came since (false
	// first: a run's first heartbeat is full). base names that heartbeat
	// and synced holds the counts it left in Redis. moved are the pods
	// whose counts changed here since the last heartbeat took its
	// snapshot, whether or not Redis saw the change (a fallback
	// admission, a release a later heartbeat makes stale).
	delta bool
	// deltas counts the deltas since the last full heartbeat: every
	// restateEvery-th heartbeat is full all the same. restates counts
	// restateLocked's calls: a heartbeat that succeeds allows a delta
	// only if none came since its snapshot (a release call of another
	// goroutine may fail while it is in flight).
	deltas   int
	restates uint64
	base     store.SyncBase
	synced   map[string]podCounts
	moved    map[string]struct{}
}

// restateEvery bounds how long Redis may over-count for this instance
// after an admission whose reply was lost ran later than the full
// heartbeat that followed it (the admit script has no seq to make it
// stale): one heartbeat in restateEvery is full, about a minute at the
// default --heartbeat. It is for liveness only: the cap does not rest on
// it (PROTOCOL.md, "Delta heartbeats").
const restateEvery = 30

// podCounts are an instance's counts on one pod as a heartbeat sends them.
type podCounts struct{ live, est int }

// movedLocked records that this instance's counts on pod changed: the
// next heartbeat sends pod, even as a delta.
func (f *fleet) movedLocked(pod string) { f.moved[pod] = struct{}{} }

// restateLocked makes the next heartbeat a full one: a call whose outcome
// this instance does not know may have changed what Redis counts for it.
func (f *fleet) restateLocked() {
	f.delta = false
	f.restates++
}

// restate is restateLocked for a caller without f.mu.
func (f *fleet) restate() {
	f.mu.Lock()
	f.restateLocked()
	f.mu.Unlock()
}

// heldLocked is what this instance holds on pod: its own connections and
// the ones it inherited.
func (f *fleet) heldLocked(pod string) int { return f.live[pod] + f.inherited[pod] }

func newFleet(fc fleets.Fleet, name string) *fleet {
	f := &fleet{name: name, label: fc.Name, gate: semaphore.NewWeighted(gateAll), conns: map[string]*conn{},
		live: map[string]int{}, est: map[string]int{}, ent: map[string]int{}, spare: map[string]int{}, rej: map[rejKey]int64{},
		synced: map[string]podCounts{}, moved: map[string]struct{}{}}
	f.cfg.Store(&fc)
	return f
}

// conf is the fleet's configuration as of now (see Apply).
func (f *fleet) conf() *fleets.Fleet { return f.cfg.Load() }

func (f *fleet) lowerEntLocked(pod string) {
	if f.ent[pod]--; f.ent[pod] <= 0 {
		delete(f.ent, pod)
	}
}

// lowerEntToHeldLocked is the model's lower_ent: ent := min(ent, held) on
// every pod. It gives up the entitlement this instance does not use, the
// slots of queued releases with it (spare lives in ent - held, now 0):
// none is left to reuse.
func (f *fleet) lowerEntToHeldLocked() {
	clear(f.spare)
	for pod, n := range f.ent {
		if h := f.heldLocked(pod); n > h {
			if h == 0 {
				delete(f.ent, pod)
			} else {
				f.ent[pod] = h
			}
		}
	}
}

// takeSpareLocked takes one spare slot on pod: for an admission (the next
// release of pod to leave the queue is then not sent), or for that
// release as it leaves.
func (f *fleet) takeSpareLocked(pod string) {
	if f.spare[pod]--; f.spare[pod] <= 0 {
		delete(f.spare, pod)
	}
}

// removeConnLocked removes c from the local truth: conns, live, est and
// uncounted (the held-- of the model's release_local and lower_both).
func (f *fleet) removeConnLocked(c *conn) {
	f.movedLocked(c.pod)
	delete(f.conns, c.id)
	if c.uncounted {
		f.uncounted--
	}
	if f.live[c.pod]--; f.live[c.pod] <= 0 {
		delete(f.live, c.pod)
	}
	if c.established {
		if f.est[c.pod]--; f.est[c.pod] <= 0 {
			delete(f.est, c.pod)
		}
	}
}

func (f *fleet) reject(r store.Reason, now time.Time) {
	f.mu.Lock()
	f.rejectLocked(r, now)
	f.mu.Unlock()
}

// rejectLocked buffers a rejection the admit script did not record; the next
// heartbeat flushes it.
func (f *fleet) rejectLocked(r store.Reason, now time.Time) {
	f.rej[rejKey{r, store.Bucket(now)}]++
}

// inRegistryLocked says whether pod belongs to the fleet as far as this
// instance knows: its static list, the placeable pods of the last
// heartbeat, or a pod Redis counts this instance's connections on (a pod
// that stopped being ready or began draining still carries them).
func (f *fleet) inRegistryLocked(pod string) bool {
	if slices.Contains(f.conf().Pods, pod) {
		return true
	}
	if _, ok := slices.BinarySearch(f.view.pods, pod); ok {
		return true
	}
	return f.live[pod] > 0 || f.ent[pod] > 0 || f.view.mine[pod] > 0
}

// view is what the last successful heartbeat saw; the open fallback
// decides from it.
type view struct {
	ok    bool
	pods  []string       // placeable pods, sorted
	load  map[string]int // pod -> live connections, all instances
	mine  map[string]int // pod -> this instance's part of load
	loads []int          // the values of load, sorted: what reuse asks of the policy (fits)
	// free is the sum over the placeable pods of cap - load (those under
	// the cap), mineTotal the sum of mine: what a sharded fleet's choice
	// of a group reads (freeSlots).
	free, mineTotal int
	// hint guesses the admit script's next pick from this view (hint.go);
	// gen tells this view from the one before, so that a call's answer is
	// learnt only by the view its guess came from.
	hint hints
	gen  uint64
}

func newView(res store.SyncResult, counts []store.PodCount, cap int) view {
	v := view{ok: true, load: res.Avail, mine: map[string]int{}}
	for _, c := range counts {
		v.mine[c.Pod] = c.Live
		v.mineTotal += c.Live
	}
	for pod, n := range res.Avail {
		v.pods = append(v.pods, pod)
		v.loads = append(v.loads, n)
		v.free += max(0, cap-n)
	}
	sort.Strings(v.pods)
	sort.Ints(v.loads)
	return v
}

// fits says whether the admit script could pick pod next, as far as the
// view saw the fleet: not above the cap (a lowered cap), and among the
// pods the policy ranks first: under spread within one of the emptiest,
// under pack at least as full as every other pod under the cap.
func (v *view) fits(pod string, fc *fleets.Fleet) bool {
	load, cap := v.load[pod], fc.MaxConnectionsPerPod
	if load > cap {
		return false
	}
	if fc.Policy != fleets.PolicyPack {
		return load <= v.loads[0]+1 // the pod is in the view: loads has one
	}
	// the fullest pod under the cap: the last load below it
	i := sort.SearchInts(v.loads, cap)
	return i == 0 || load >= v.loads[i-1]
}
