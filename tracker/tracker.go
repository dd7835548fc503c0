package tracker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"
)

// errGateBusy: a heartbeat held the admission gate past the deadline.
var errGateBusy = errors.New("waiting for the heartbeat")

// errGaveUp: while an admission waited for the gate, the heartbeat that
// held it failed. Its script may still run, and would replace this
// instance's slots with a count that misses anything admitted after it, so
// nothing goes through Redis until a heartbeat succeeds (PROTOCOL.md,
// Entitlements).
var errGaveUp = errors.New("the heartbeat before it failed")

// Errors of the admission path that callers turn into client errors.
var (
	ErrUnknownFleet = errors.New("unknown fleet")
	ErrUnknownConn  = errors.New("unknown connection id")
	// ErrNotAdoptable: an access-log entry names a connection this instance
	// cannot account for (an id it never issued, beyond what a previous run
	// left, or a pod outside the fleet's registry); it is not counted.
	ErrNotAdoptable = errors.New("not this instance's to adopt")
)

// Result is the outcome of one admission.
type Result struct {
	Fleet    string
	Admitted bool
	// Conn identifies the admitted connection in Establish, Renew, Release.
	Conn string
	// fleets.Pod is the "ip:port" the connection must go to.
	Pod        string
	Reason     store.Reason
	RetryAfter time.Duration
	// Fallback is true when the decision was made without Redis.
	Fallback bool
	// Reused is true when the connection took a slot that one of this
	// instance's connections had freed and whose release was still queued
	// (PROTOCOL.md, "Reuse"): Redis counted it for this instance all along.
	Reused bool
}

// Tracker is one Envoy instance's side of the shared state. Create it with
// New, call Start (or Heartbeat in a loop of your own) and Admit/Establish/
// Renew/Release from the data plane.
type Tracker struct {
	cfg     Config
	store   *store.Store
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time

	// fleets holds every fleet, the retiring ones too (see Apply); the map
	// is never changed, Apply swaps in a new one.
	fleets  atomic.Pointer[map[string]*fleet]
	applyMu sync.Mutex
	kick    chan struct{} // asks Run for a heartbeat now
	// draining: admit nothing (Drain); left: heartbeat no more (Leave).
	draining, left atomic.Bool
	byConn         sync.Map // conn id -> *fleet

	// Connection ids are idTag (a hash of the instance id), this process's
	// random part and a counter: unique across restarts without reading
	// the system's random source per admission, and recognisably this
	// instance's (a restarted tracker adopts its predecessor's ids; no
	// other instance's).
	idTag    string
	idPrefix string
	idSeq    atomic.Uint64
}

// Option changes how New builds a Tracker.
type Option func(*Tracker)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(t *Tracker) { t.log = l } }

// WithMetrics sets the collectors (default: unregistered ones).
func WithMetrics(m *Metrics) Option { return func(t *Tracker) { t.metrics = m } }

// WithClock sets the time source, for tests with a controlled clock.
func WithClock(now func() time.Time) Option { return func(t *Tracker) { t.now = now } }

// New validates cfg (after defaults) and returns a Tracker on store.
func New(cfg Config, store *store.Store, opts ...Option) (*Tracker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tracker config: %w", err)
	}
	t := &Tracker{cfg: cfg, store: store, log: slog.Default(), now: time.Now, kick: make(chan struct{}, 1), idTag: instanceTag(cfg.InstanceID)}
	var rnd [idRandomBytes]byte
	_, _ = rand.Read(rnd[:]) // crypto/rand.Read never fails (Go 1.24+)
	t.idPrefix = t.idTag + hex.EncodeToString(rnd[:])
	for _, o := range opts {
		o(t)
	}
	if t.metrics == nil {
		t.metrics = NewMetrics(nil)
	}
	for _, m := range []FallbackMode{FallbackShare, FallbackClosed, FallbackOpen} {
		v := 0.0
		if m == cfg.Fallback {
			v = 1
		}
		t.metrics.FallbackMode.WithLabelValues(string(m)).Set(v)
	}
	byName := map[string]*fleet{}
	for _, fc := range cfg.Fleets {
		byName[fc.Name] = t.newFleet(fc)
	}
	t.fleets.Store(&byName)
	return t, nil
}

func (t *Tracker) newFleet(fc fleets.Fleet) *fleet {
	f := newFleet(fc, t.now())
	f.stalled = store.NewStalled(t.cfg.InstanceTTL)
	t.metrics.addFleet(fc.Name)
	f.admitted = t.metrics.Admissions.WithLabelValues(fc.Name, "admitted", "")
	f.rejected = map[store.Reason]prometheus.Counter{}
	for _, r := range store.Reasons {
		f.rejected[r] = t.metrics.Admissions.WithLabelValues(fc.Name, "rejected", string(r))
	}
	f.admits = &batcher[struct{}, admission]{max: maxBatch, timeout: t.cfg.RedisTimeout, send: t.sendAdmits(f),
		size: t.metrics.BatchSize.WithLabelValues("admit")}
	f.releases = &batcher[releaseReq, struct{}]{max: maxBatch, timeout: t.cfg.RedisTimeout, send: t.sendReleases(f),
		size: t.metrics.BatchSize.WithLabelValues("release"), linger: releaseLinger}
	return f
}

// maxBatch bounds the admissions or releases of one script call, and so
// the time Redis spends in it.
const maxBatch = 64

// releaseLinger is how long a release waits for an admit call to carry it
// (PROTOCOL.md, "Batches"), or for an admission to take its slot back
// (reuse): one script call where there would be two, or none. A slot
// comes free in Redis that much later, never sooner. At 1 ms, with 1
// caller on the peer benchmark's lifecycle loop (0.3-0.5 ms), one
// admission in seven still missed a spare slot and asked Redis; at 5 ms
// almost none does, and 5 ms is far below anything the scaler or a
// client could tell.
const releaseLinger = 5 * time.Millisecond

// Config is the tracker's configuration, defaults applied, with the fleets
// it serves now (see Apply).
func (t *Tracker) Config() Config {
	c := t.cfg
	c.Fleets = nil
	for _, name := range t.Fleets() {
		c.Fleets = append(c.Fleets, *(*t.fleets.Load())[name].conf())
	}
	return c
}

// store.Store is the store the tracker writes to.
func (t *Tracker) Store() *store.Store { return t.store }

// conn is one connection this instance admitted: the local truth that every
// heartbeat re-publishes.
type conn struct {
	id, pod     string
	established bool
	admitted    time.Time
	renewed     time.Time
	// uncounted: Redis does not count the connection for this instance
	// (Adopt took it over after its slot was released) until a heartbeat
	// sent after adoptSeq publishes it. Its release then changes nothing
	// in Redis, where it would free another connection's slot.
	uncounted bool
	adoptSeq  uint64
	// seq is the instance's seq when it was admitted: a heartbeat sent
	// after it published it pending (pend:<id>) if it was not established.
	seq uint64
}

// gateAll is the weight a heartbeat takes of fleet.gate: all of it.
const gateAll = 1 << 30

type rejKey struct {
	reason store.Reason
	bucket int64
}

type fleet struct {
	name string
	// cfg is replaced whole by Apply; read it through conf.
	cfg atomic.Pointer[fleets.Fleet]
	// retired: the fleet left the configuration; it admits nothing and
	// stays until its connections have ended (Apply).
	retired   atomic.Bool
	podsDirty atomic.Bool // its static pods changed: the next heartbeat writes them
	noReuse   atomic.Bool // tests only (export_test.go): every admission asks Redis
	limiter   *rate.Limiter
	admitted  prometheus.Counter
	rejected  map[store.Reason]prometheus.Counter

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

	mu    sync.Mutex // guards everything below
	conns map[string]*conn
	live  map[string]int // pod -> live connections of this instance
	est   map[string]int // pod -> established connections of this instance
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
	epoch    string
	// epochSeen is when this instance first saw epoch (its own clock), and
	// granting whether Redis said that its recovery wait is over.
	epochSeen time.Time
	granting  bool
	// seq numbers this instance's heartbeats and releases, so that Redis
	// ignores one that arrives after a later heartbeat (sync.lua).
	seq uint64
	// leaseUntil is the end of this instance's lease by its own monotonic
	// clock: InstanceTTL from the moment its last successful heartbeat was
	// sent, before Redis stamped it. Past it, the entitlement may have been
	// given away.
	leaseUntil time.Time
	view       view
	// redisSaid describes the last failed Redis call (store.DescribeRedisError),
	// for logs and readiness; redisWarned is when it was last warned of.
	redisSaid   string
	redisWarned time.Time
	// synced is when the last heartbeat succeeded (wall clock, for
	// /metrics and /status; zero before the first), and recoveryEnd when
	// the epoch's recovery wait ends as that heartbeat saw it (this
	// instance's clock: Redis' remaining wait, or a full instance TTL
	// since it first saw the epoch, whichever is later).
	synced      time.Time
	recoveryEnd time.Time
	// uncounted is how many of conns are (conn.uncounted).
	uncounted int
	// stalled watches the other instances' seqs; stale names the ones the
	// next heartbeat asks Redis to reap.
	stalled *store.Stalled
	stale   []string

	// inherited are connections a previous run of this instance left in
	// Redis (the tracker restarted, its Envoy kept its connections). They
	// stay counted until inheritUntil, one lease, unless Envoy's access log
	// names them first (Adopt).
	inheritChecked bool
	inherited      map[string]int
	inheritUntil   time.Time
}

// heldLocked is what this instance holds on pod: its own connections and
// the ones it inherited.
func (f *fleet) heldLocked(pod string) int { return f.live[pod] + f.inherited[pod] }

// view is what the last successful heartbeat saw; the open fallback
// decides from it.
type view struct {
	ok    bool
	pods  []string       // placeable pods, sorted
	load  map[string]int // pod -> live connections, all instances
	mine  map[string]int // pod -> this instance's part of load
	loads []int          // the values of load, sorted: what reuse asks of the policy (fits)
}

func newFleet(fc fleets.Fleet, now time.Time) *fleet {
	lim := rate.NewLimiter(rateOf(fc), fc.Burst)
	lim.SetBurstAt(now, fc.Burst)
	f := &fleet{name: fc.Name, limiter: lim, gate: semaphore.NewWeighted(gateAll), conns: map[string]*conn{},
		live: map[string]int{}, est: map[string]int{}, ent: map[string]int{}, spare: map[string]int{}, rej: map[rejKey]int64{}}
	f.cfg.Store(&fc)
	return f
}

// conf is the fleet's configuration as of now (see Apply).
func (f *fleet) conf() *fleets.Fleet { return f.cfg.Load() }

// fleet finds a fleet by name, a retiring one too: its connections still
// end, renew and are adopted.
func (t *Tracker) fleet(name string) (*fleet, error) {
	f, ok := (*t.fleets.Load())[name]
	if !ok {
		return nil, fmt.Errorf("fleet %q: %w", name, ErrUnknownFleet)
	}
	return f, nil
}

// Fleets lists the configured fleet names, sorted (not the retiring ones).
func (t *Tracker) Fleets() []string {
	var out []string
	for n, f := range *t.fleets.Load() {
		if !f.retired.Load() {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// allFleets lists every fleet, retiring ones included, sorted by name.
func (t *Tracker) allFleets() []*fleet {
	m := *t.fleets.Load()
	out := make([]*fleet, 0, len(m))
	for _, f := range m {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Admit decides one new connection of fleet: the local token bucket first,
// then one Redis script; while Redis is unreachable, the fallback.
func (t *Tracker) Admit(ctx context.Context, fleetName string) (Result, error) {
	start := time.Now()
	f, err := t.fleet(fleetName)
	if err == nil && f.retired.Load() {
		err = fmt.Errorf("fleet %q: removed from the configuration: %w", fleetName, ErrUnknownFleet)
	}
	if err != nil {
		return Result{}, fmt.Errorf("admit: %w", err)
	}
	if t.draining.Load() {
		return Result{Fleet: f.name, Reason: ReasonDraining, RetryAfter: time.Second}, nil
	}
	res, err := t.admit(ctx, f)
	if err != nil {
		return res, err
	}
	t.metrics.AdmitSeconds.Observe(time.Since(start).Seconds())
	if res.Reused {
		t.metrics.Reused.WithLabelValues(f.name).Inc()
	}
	if res.Admitted {
		f.admitted.Inc()
	} else {
		f.rejected[res.Reason].Inc()
	}
	return res, nil
}

func (t *Tracker) admit(ctx context.Context, f *fleet) (Result, error) {
	now := t.now()
	if r := f.limiter.ReserveN(now, 1); r.DelayFrom(now) > 0 {
		d := r.DelayFrom(now)
		r.CancelAt(now)
		f.reject(store.ReasonRateLimit, now)
		return Result{Fleet: f.name, Reason: store.ReasonRateLimit, RetryAfter: ceilSecond(d)}, nil
	}
	if res, ok := t.reuse(f, now); ok {
		return res, nil
	}
	why := "degraded"
	if f.redisUsable() {
		res, fence, err := t.admitRedis(ctx, f, now)
		switch {
		case err == nil && fence == "":
			return res, nil
		case ctx.Err() != nil:
			// The caller left; whatever the script did, the next heartbeat
			// publishes the truth again.
			return Result{}, fmt.Errorf("admit %s: %w", f.name, ctx.Err())
		case errors.Is(err, errGateBusy):
			// A heartbeat held the gate past this admission's deadline: no
			// Redis failure, only this admission leaves Redis.
			why = "gate_busy"
		case errors.Is(err, errQueued):
			// Calls in flight held it past its deadline: Redis is slow, not
			// failing; only this admission leaves Redis.
			why = "queued"
		case errors.Is(err, errGaveUp):
		case err != nil:
			// The script may have run: Redis then counts a slot this
			// instance does not, which is safe and the next heartbeat fixes.
			why = "redis_error"
			t.redisFailed(f, "admit", err)
		default:
			why = string(fence)
			t.fence(f, fence)
		}
	}
	t.metrics.Fallbacks.WithLabelValues(f.name, why).Inc()
	return t.admitFallback(f, now, why), nil
}

// fallbackWhys are the values of fallback_decisions_total's why label.
var fallbackWhys = []string{"redis_error", "gate_busy", "queued", "degraded", string(store.FenceEpoch), string(store.FenceRecovering), string(store.FenceLease)}

// refusalLocked is the reason a fallback gives when it has no slot
// either, for an admission that left Redis for why: recovering when Redis
// answered and the fleet is in (or, fenced by a newer epoch, about to
// join) a recovery wait; redis_down otherwise. Only the reason differs:
// what is admitted is the fallback's decision alone.
func (f *fleet) refusalLocked(why string) store.Reason {
	switch {
	case why == string(store.FenceRecovering), why == string(store.FenceEpoch):
		return store.ReasonRecovering
	case why == "degraded" && f.fenced && f.fencedBy == store.FenceEpoch && !f.degraded:
		return store.ReasonRecovering
	}
	return store.ReasonRedisDown
}

// admitRedis runs the admit script. A fence is Redis' refusal to decide.
func (t *Tracker) admitRedis(ctx context.Context, f *fleet, now time.Time) (Result, store.Fence, error) {
	deadline := time.Now().Add(t.cfg.RedisTimeout)
	if err := acquire(ctx, f.gate, deadline); err != nil {
		return Result{}, "", fmt.Errorf("admit %s: %w (%v)", f.name, errGateBusy, err)
	}
	defer f.gate.Release(1)
	if !f.redisUsable() { // the heartbeat it waited for failed
		return Result{}, "", fmt.Errorf("admit %s: %w", f.name, errGaveUp)
	}
	a, err := f.admits.do(ctx, struct{}{}, deadline)
	if err != nil || a.Fence != "" {
		return Result{}, a.Fence, err
	}
	if a.Pod == "" {
		return Result{Fleet: f.name, Reason: a.Reason, RetryAfter: time.Duration(f.conf().RetryAfter)}, "", nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if a.reused {
		// The sender took the slot out of spare for this admission; it is
		// still in ent - held unless the share fallback took it meanwhile.
		// And the lease may have ended meanwhile (a 'lease' refusal of
		// the batch's other admissions): a reaped instance reuses nothing.
		if f.ent[a.Pod] <= f.heldLocked(a.Pod) || !now.Before(f.leaseUntil) {
			return Result{}, "", fmt.Errorf("admit %s: reused slot on %s taken or lease over meanwhile: %w", f.name, a.Pod, errGaveUp)
		}
		return t.recordReusedLocked(f, a.Pod, now), "", nil
	}
	f.ent[a.Pod]++ // granted: Redis counts it for this instance
	return t.recordLocked(f, a.Pod, now, false), "", nil
}

// admission is what a batch's call gave one admission: Redis' decision,
// or a slot of this instance's taken back (reused) when the batch was
// about to be sent.
type admission struct {
	store.Admission
	reused bool
}

// sendAdmits makes one admit call for n admissions. Each of them holds its
// unit of the gate while queued and sent, so no heartbeat (which takes the
// whole gate, and alone changes the epoch) runs between their checks that
// Redis is usable and this call: the epoch is the one they saw.
func (t *Tracker) sendAdmits(f *fleet) func(context.Context, []struct{}) ([]admission, error) {
	return func(ctx context.Context, n []struct{}) ([]admission, error) {
		fc := f.conf()
		// The releases queued meanwhile ride along, applied first. Where
		// a spare slot suits an admission of the batch, the admission takes
		// it back instead, and neither goes to Redis (reuse). A spare
		// release stays queued for its linger: this call would give Redis
		// a slot the next admission might take back.
		rel := f.releases.take(func(r releaseReq) bool { return r.spare })
		now := t.now()
		f.mu.Lock()
		epoch, seq := f.epoch, f.seq
		var reused []string
		var taken map[string]int // pod -> slots taken here, recorded later
		for len(reused) < len(n) {
			pod := f.spareSlotLocked(now, taken)
			if pod == "" {
				break
			}
			f.takeSpareLocked(pod)
			if taken == nil {
				taken = map[string]int{}
			}
			taken[pod]++
			reused = append(reused, pod)
		}
		counts, lowered := f.releaseCountsLocked(rel, seq)
		f.mu.Unlock()
		res := make([]admission, len(n))
		for i, pod := range reused {
			res[i] = admission{Admission: store.Admission{Pod: pod}, reused: true}
		}
		var a store.AdmitReply
		var err error
		switch {
		case len(reused) < len(n):
			a, err = t.store.Admit(ctx, store.AdmitRequest{Fleet: f.name, MaxPerPod: fc.MaxConnectionsPerPod, Policy: fc.Policy, Instance: t.cfg.InstanceID, Epoch: epoch, Now: now, N: len(n) - len(reused), Seq: seq, Releases: counts})
		case len(counts) > 0: // every admission reused: the releases go alone
			_, err = t.store.Release(ctx, store.ReleaseRequest{Fleet: f.name, Instance: t.cfg.InstanceID, Epoch: epoch, Seq: seq, Releases: counts})
		}
		if len(counts) > 0 {
			t.released(f, counts, lowered, seq, err)
		}
		if rel != nil {
			f.releases.finish()
		}
		if len(reused) == len(n) {
			return res, nil // decided here, whatever the releases' call did
		}
		if errors.Is(err, store.ErrFenced) {
			err = nil // the admissions' own answer is a.Fence
		}
		if err != nil {
			// The reused ones did not need Redis; the call's failure is
			// theirs too all the same: their slots stay in ent - held.
			return nil, err
		}
		for i := range res[len(reused):] {
			r := &res[len(reused)+i].Admission
			switch {
			case a.Fence != "":
				*r = store.Admission{Fence: a.Fence, Wait: a.Wait}
			case i < len(a.Pods):
				*r = store.Admission{Pod: a.Pods[i]}
			default:
				*r = store.Admission{Reason: a.Reason}
			}
		}
		return res, nil
	}
}

// acquire takes one unit of gate, waiting until deadline at most. A free
// gate, the common case, costs no timer.
func acquire(ctx context.Context, gate *semaphore.Weighted, deadline time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if gate.TryAcquire(1) {
		return nil
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	return gate.Acquire(ctx, 1)
}

// fence handles Redis' refusal to decide an admission (see store.Fence).
func (t *Tracker) fence(f *fleet, why store.Fence) {
	if why == store.FenceRecovering {
		return // the epoch is ours; it grants nothing yet
	}
	f.mu.Lock()
	was := f.fenced
	f.fenced, f.fencedBy = true, why
	if why == store.FenceLease {
		// The lease ended in Redis: an instance may have reaped this one and
		// given its slots away, so its own lease is over too, and what it
		// frees until its next heartbeat is no longer its to reuse.
		f.dropSpareLocked()
		f.leaseUntil = time.Time{}
	}
	f.mu.Unlock()
	if !was {
		t.log.Warn("redis refused to admit for this instance until its next heartbeat", "fleet", f.name, "why", string(why))
	}
}

// dropSpareLocked gives up the entitlement this instance does not use,
// the slots of queued releases with it: none is left to reuse.
func (f *fleet) dropSpareLocked() {
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

func (f *fleet) lowerEntLocked(pod string) {
	if f.ent[pod]--; f.ent[pod] <= 0 {
		delete(f.ent, pod)
	}
}

// reuse admits into a slot of this instance whose release is still queued
// (PROTOCOL.md, "Reuse"): Redis counts the slot for this instance, so
// taking it back needs no call, and the release is then not sent. Only
// while Redis is usable and this instance's lease runs (the share
// fallback's rule), and only on a pod the policy would also pick as far as
// the last heartbeat saw the fleet: placeable, not above the cap, and
// among the emptiest (spread) or the fullest under the cap (pack), so that
// reuse does not keep connections off a pod that just came up, nor on one
// that could empty.
func (t *Tracker) reuse(f *fleet, now time.Time) (Result, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pod := f.spareSlotLocked(now, nil)
	if pod == "" {
		return Result{}, false
	}
	f.takeSpareLocked(pod)
	return t.recordReusedLocked(f, pod, now), true
}

func (t *Tracker) recordReusedLocked(f *fleet, pod string, now time.Time) Result {
	res := t.recordLocked(f, pod, now, false)
	res.Reused = true
	return res
}

// spareSlotLocked picks the pod of a spare slot that reuse may take back
// now (see reuse), "" when there is none; taken counts slots already
// taken back and not yet recorded (held).
func (f *fleet) spareSlotLocked(now time.Time, taken map[string]int) string {
	if len(f.spare) == 0 || !f.usableLocked() || !now.Before(f.leaseUntil) || f.noReuse.Load() {
		return ""
	}
	fc := f.conf()
	best, bestLoad := "", 0
	for pod, n := range f.spare {
		load, placeable := f.view.load[pod]
		if n <= 0 || f.ent[pod] <= f.heldLocked(pod)+taken[pod] || !placeable || !f.view.fits(pod, fc) {
			continue
		}
		if ranksBefore(fc.Policy, pod, load, best, bestLoad) {
			best, bestLoad = pod, load
		}
	}
	return best
}

// ranksBefore says whether pod, at load, comes before best (at bestLoad;
// "" for none yet) in policy's order: the fullest first under pack, the
// emptiest under spread, then by name.
func ranksBefore(policy fleets.Policy, pod string, load int, best string, bestLoad int) bool {
	switch {
	case best == "" || (load == bestLoad && pod < best):
		return true
	case policy == fleets.PolicyPack:
		return load > bestLoad
	default:
		return load < bestLoad
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

func (t *Tracker) recordLocked(f *fleet, pod string, now time.Time, fallback bool) Result {
	c := &conn{id: t.idPrefix + strconv.FormatUint(t.idSeq.Add(1), 36), pod: pod, admitted: now, renewed: now, seq: f.seq}
	f.conns[c.id] = c
	f.live[pod]++
	t.byConn.Store(c.id, f)
	return Result{Fleet: f.name, Admitted: true, Conn: c.id, Pod: pod, Fallback: fallback}
}

// admitFallback decides an admission Redis did not.
//
// share: only into a slot Redis already counts for this instance and that
// it does not use (ent - held: connections that ended while Redis could not
// be told), and only while its lease holds. Nobody else can hold such a
// slot, so the cap holds whatever the others do (PROTOCOL.md).
//
// open: against the last heartbeat's counts, as if the other instances
// admitted nothing since. May exceed the cap.
//
// With no slot it refuses, with the reason refusalLocked gives for why
// (the admission left Redis for it): redis_down, or recovering.
func (t *Tracker) admitFallback(f *fleet, now time.Time, why string) Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	best, bestLoad := "", 0
	policy := f.conf().Policy
	better := func(pod string, load int) bool { return ranksBefore(policy, pod, load, best, bestLoad) }
	switch t.cfg.Fallback {
	case FallbackShare:
		if !now.Before(f.leaseUntil) {
			break
		}
		for pod, n := range f.ent {
			if held := f.heldLocked(pod); held < n && better(pod, held) {
				best, bestLoad = pod, held
			}
		}
	case FallbackOpen:
		if !f.view.ok {
			break
		}
		for _, pod := range f.view.pods {
			load := f.view.load[pod] - f.view.mine[pod] + f.heldLocked(pod)
			if load < f.conf().MaxConnectionsPerPod && better(pod, load) {
				best, bestLoad = pod, load
			}
		}
	}
	if best == "" {
		refused := f.refusalLocked(why)
		f.rejectLocked(refused, now)
		return Result{Fleet: f.name, Reason: refused, RetryAfter: time.Second, Fallback: true}
	}
	return t.recordLocked(f, best, now, true)
}

// Establish marks a connection established (Envoy's tunnel is up).
func (t *Tracker) Establish(id string) error { return t.touch(id, true) }

// Renew extends a connection's lease (Envoy's periodic access-log entry).
func (t *Tracker) Renew(id string) error { return t.touch(id, true) }

func (t *Tracker) touch(id string, established bool) error {
	v, ok := t.byConn.Load(id)
	if !ok {
		return fmt.Errorf("connection %q: %w", id, ErrUnknownConn)
	}
	f := v.(*fleet)
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.conns[id]
	if !ok {
		return fmt.Errorf("connection %q: %w", id, ErrUnknownConn)
	}
	c.renewed = t.now()
	if established && !c.established {
		c.established = true
		f.est[c.pod]++
	}
	return nil
}

// Adopt takes over a connection Envoy's access log names (by id, fleet and
// upstream pod) that this tracker does not hold: one a previous run of this
// instance admitted, while its count is still inherited, or one this
// process issued and released because its renewals were lost although
// Envoy still carries it. Counting it again tells the truth, even if its
// slot was given away meanwhile. ended says the entry reports the
// connection's end: an inherited slot is then given back, anything else
// needs nothing.
//
// Only what this instance can account for is adopted: ids of its own
// format (idTag), of this process up to the last one it issued or of a
// previous run up to what Redis held for it when it restarted, on a pod of
// the fleet's registry. Anything else is ErrNotAdoptable: a forged or
// misrouted entry must not make Redis count slots nobody holds.
// ErrUnknownConn when there is nothing to take over.
func (t *Tracker) Adopt(fleetName, id, pod string, ended bool) error {
	f, err := t.fleet(fleetName)
	if err != nil {
		return fmt.Errorf("adopt: %w", err)
	}
	if err := fleets.ValidatePodAddr(pod); err != nil {
		return fmt.Errorf("adopt: connection %q: %w", id, err)
	}
	mine, previous := t.ownID(id)
	if !mine && !previous {
		return fmt.Errorf("adopt: connection %q: not an id of instance %s: %w", id, t.cfg.InstanceID, ErrNotAdoptable)
	}
	now := t.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, held := f.conns[id]; held {
		return nil
	}
	inherited := previous && f.inherited[pod] > 0 && now.Before(f.inheritUntil)
	if ended {
		if !inherited {
			return fmt.Errorf("adopt: ended connection %q: %w", id, ErrUnknownConn)
		}
		if f.inherited[pod]--; f.inherited[pod] == 0 {
			delete(f.inherited, pod)
		}
		return nil // the next heartbeat publishes the release
	}
	switch {
	case inherited:
		if f.inherited[pod]--; f.inherited[pod] == 0 {
			delete(f.inherited, pod)
		}
	case previous:
		return fmt.Errorf("adopt: connection %q of a previous run: more than Redis held for it on %s: %w", id, pod, ErrNotAdoptable)
	case !f.inRegistryLocked(pod):
		return fmt.Errorf("adopt: connection %q: pod %s is not in fleet %s's registry: %w", id, pod, f.name, ErrNotAdoptable)
	}
	// An inherited slot is counted in Redis for this instance; a slot this
	// process released is not, until the next heartbeat publishes it.
	c := &conn{id: id, pod: pod, established: true, admitted: now, renewed: now, uncounted: !inherited, adoptSeq: f.seq}
	f.conns[id] = c
	f.live[pod]++
	f.est[pod]++
	if c.uncounted {
		f.uncounted++
	}
	t.byConn.Store(id, f)
	return nil
}

// idRandomBytes is the size of a process's random part of connection ids.
const idRandomBytes = 6

// instanceTag is the part of every connection id that names the instance:
// 8 hex digits of a hash of its id.
func instanceTag(instance string) string {
	h := sha256.Sum256([]byte(instance))
	return hex.EncodeToString(h[:4])
}

// ownID says whether id is one this process issued (mine: its prefix, a
// counter it reached) or one of a previous run of this instance (its tag,
// another random part).
func (t *Tracker) ownID(id string) (mine, previous bool) {
	n := len(t.idPrefix)
	if len(id) <= n || len(id) > n+13 || !strings.HasPrefix(id, t.idTag) {
		return false, false
	}
	if _, err := hex.DecodeString(id[len(t.idTag):n]); err != nil {
		return false, false
	}
	seq, err := strconv.ParseUint(id[n:], 36, 64)
	if err != nil || seq == 0 {
		return false, false
	}
	if id[:n] == t.idPrefix {
		return seq <= t.idSeq.Load(), false
	}
	return false, true
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

// Release frees a connection's slot: locally at once, in Redis by the next
// release call, which carries every release queued meanwhile. While Redis
// is unreachable the slot stays entitled to this instance (Redis still
// counts it), so the share fallback may reuse it; the next heartbeat gives
// it back.
func (t *Tracker) Release(ctx context.Context, id string) error {
	v, ok := t.byConn.Load(id)
	if !ok {
		return fmt.Errorf("release: connection %q: %w", id, ErrUnknownConn)
	}
	f := v.(*fleet)
	// The local update waits for a heartbeat in flight, so that the
	// heartbeat's counts and the entitlement it sets either include the
	// connection (and the release is queued after it) or do not. Without
	// the gate in time, only the local truth changes and the next heartbeat
	// publishes it.
	gated := f.redisUsable() && acquire(ctx, f.gate, time.Now().Add(t.cfg.RedisTimeout)) == nil
	f.mu.Lock()
	// The heartbeat it waited for may have failed (see errGaveUp).
	queued := gated && f.usableLocked()
	c, ok := f.conns[id]
	if !ok {
		f.mu.Unlock()
		if gated {
			f.gate.Release(1)
		}
		return fmt.Errorf("release: connection %q: %w", id, ErrUnknownConn)
	}
	f.dropLocked(c)
	queued = queued && !c.uncounted
	// Pending in Redis only if a heartbeat since its admission said so.
	r := releaseReq{pod: c.pod, pending: !c.established && c.seq < f.seq, seq: f.seq}
	switch {
	case !queued:
	case f.ent[c.pod]-f.heldLocked(c.pod) > f.spare[c.pod] && !f.noReuse.Load():
		// Its slot stays in ent until the release leaves the queue, and
		// an admission may take it back meanwhile (reuse).
		r.spare = true
		f.spare[c.pod]++
	case f.ent[c.pod] > 0:
		// Lowered now: a release that never reaches Redis is taken as
		// applied (invariant L), unless it surely did not run (sendReleases).
		r.lowered = true
		f.lowerEntLocked(c.pod)
	}
	f.mu.Unlock()
	if gated {
		f.gate.Release(1)
	}
	t.byConn.Delete(id)
	if queued {
		f.releases.post(r)
	}
	return nil
}

// Flush waits until no release is queued or in flight (every call has
// returned or failed), or ctx ends. Under a steady stream of releases that
// may not happen before ctx ends.
func (t *Tracker) Flush(ctx context.Context) error {
	for _, f := range t.allFleets() {
		if err := f.releases.wait(ctx); err != nil {
			return fmt.Errorf("flush %s: %w", f.name, err)
		}
	}
	return nil
}

// releaseReq is one ended connection for the next release call. seq is the
// instance's seq when it ended: the seq of the heartbeat before its end.
type releaseReq struct {
	pod     string
	pending bool
	seq     uint64
	lowered bool // it took one from ent (there may have been none to take)
	spare   bool // it left its slot in ent, counted in spare (reuse)
}

// sendReleases makes one release call for the connections that ended
// since the last heartbeat sent, summed per pod.
func (t *Tracker) sendReleases(f *fleet) func(context.Context, []releaseReq) ([]struct{}, error) {
	return func(ctx context.Context, reqs []releaseReq) ([]struct{}, error) {
		f.mu.Lock()
		epoch, seq := f.epoch, f.seq
		counts, lowered := f.releaseCountsLocked(reqs, seq)
		f.mu.Unlock()
		if len(counts) == 0 {
			return nil, nil
		}
		_, err := t.store.Release(ctx, store.ReleaseRequest{Fleet: f.name, Instance: t.cfg.InstanceID, Epoch: epoch, Seq: seq, Releases: counts})
		t.released(f, counts, lowered, seq, err)
		return nil, nil
	}
}

// releaseCountsLocked sums reqs per pod for a release call at seq, with
// how many of each pod's took one from ent. A release whose slot is spare
// takes it out of ent now, as it leaves the queue; one whose slot an
// admission took back (reuse) is not sent: that slot is held again.
func (f *fleet) releaseCountsLocked(reqs []releaseReq, seq uint64) (counts []store.ReleaseCount, lowered []int) {
	at := make(map[string]int, len(reqs)) // pod -> index in counts
	for _, r := range reqs {
		if r.seq < seq {
			// A heartbeat sent since left the connection out: if it ran,
			// Redis ignores this release; if not, Redis over-counts until
			// the next one. (Only a heartbeat changes the epoch, and it
			// moves seq first: what is left is of the current epoch.)
			continue
		}
		if r.spare {
			if f.spare[r.pod] == 0 {
				continue // reused
			}
			f.takeSpareLocked(r.pod)
			if f.ent[r.pod] <= f.heldLocked(r.pod) {
				// The share fallback or an adopted connection took the
				// slot: it is held, and Redis must keep counting it.
				continue
			}
			f.lowerEntLocked(r.pod)
			r.lowered = true
		}
		i, ok := at[r.pod]
		if !ok {
			i = len(counts)
			at[r.pod] = i
			counts = append(counts, store.ReleaseCount{Pod: r.pod})
			lowered = append(lowered, 0)
		}
		counts[i].N++
		if r.pending {
			counts[i].Pending++
		}
		if r.lowered {
			lowered[i]++
		}
	}
	return counts, lowered
}

// released acts on the outcome err of a call that carried counts at seq.
func (t *Tracker) released(f *fleet, counts []store.ReleaseCount, lowered []int, seq uint64, err error) {
	switch {
	case err == nil:
	case errors.Is(err, store.ErrFenced):
		t.fence(f, store.FenceEpoch)
	default:
		if notRun(err) {
			// Redis still counts these slots for this instance, unless a
			// heartbeat was sent since (its seq is higher): it published
			// the truth, or may have.
			f.mu.Lock()
			for i, c := range counts {
				if seq == f.seq && lowered[i] > 0 {
					f.ent[c.Pod] += lowered[i]
				}
			}
			f.mu.Unlock()
		}
		t.redisFailed(f, "release", err)
	}
}

// notRun reports whether err proves a script never ran: the connection was
// never made, or Redis refused the call itself (an error reply that is not
// a script's runtime error). Anything else, a timeout or a reset, may come
// after the script ran.
func notRun(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var rerr redis.Error
	return errors.As(err, &rerr) && !strings.Contains(strings.ToLower(rerr.Error()), "script")
}

func (f *fleet) dropLocked(c *conn) {
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

// redisUsable says whether admissions go through Redis: after a successful
// heartbeat (which renewed this instance's lease, told it the epoch and read
// what a previous run left), until a Redis call fails or is fenced.
func (f *fleet) redisUsable() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.usableLocked()
}

func (f *fleet) usableLocked() bool { return f.view.ok && !f.degraded && !f.fenced }

func (t *Tracker) redisFailed(f *fleet, op string, err error) {
	t.metrics.RedisErrors.WithLabelValues(op).Inc()
	said := store.DescribeRedisError(err)
	now := time.Now()
	f.mu.Lock()
	was := f.degraded
	f.degraded = true
	t.metrics.Degraded.WithLabelValues(f.name).Set(1) // with degraded: see sync
	// Warn on the first failure, when Redis says something else, and at
	// most every redisWarnEvery meanwhile: a long outage is seen in the
	// logs without a line per admission.
	warn := !was || said != f.redisSaid || now.Sub(f.redisWarned) >= redisWarnEvery
	f.redisSaid = said
	if warn {
		f.redisWarned = now
	}
	f.mu.Unlock()
	if warn {
		t.log.Warn("redis call failed, admitting from local state", "fleet", f.name, "op", op, "redis", said, "fallback", string(t.cfg.Fallback), "err", err)
	} else {
		t.log.Debug("redis call failed", "fleet", f.name, "op", op, "redis", said, "err", err)
	}
}

// redisWarnEvery spaces the warnings of a lasting Redis failure.
const redisWarnEvery = 30 * time.Second

// LocalCounts returns this instance's live connections per pod of fleet.
func (t *Tracker) LocalCounts(fleetName string) (map[string]int, error) {
	f, err := t.fleet(fleetName)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.live))
	for p, n := range f.live {
		out[p] = n
	}
	return out, nil
}

// Degraded reports whether fleet is currently admitting without Redis.
func (t *Tracker) Degraded(fleetName string) bool {
	f, err := t.fleet(fleetName)
	if err != nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.degraded
}

func ceilSecond(d time.Duration) time.Duration {
	return time.Duration(math.Ceil(d.Seconds())) * time.Second
}
