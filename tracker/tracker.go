package tracker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"
)

// errGateBusy: a heartbeat held the admission gate past the deadline.
var errGateBusy = errors.New("waiting for the heartbeat")

// Errors of the admission path that callers turn into client errors.
var (
	ErrUnknownFleet = errors.New("unknown fleet")
	ErrUnknownConn  = errors.New("unknown connection id")
)

// Result is the outcome of one admission.
type Result struct {
	Fleet    string
	Admitted bool
	// Conn identifies the admitted connection in Establish, Renew, Release.
	Conn string
	// Pod is the "ip:port" the connection must go to.
	Pod        string
	Reason     Reason
	RetryAfter time.Duration
	// Fallback is true when the decision was made without Redis.
	Fallback bool
}

// Tracker is one Envoy instance's side of the shared state. Create it with
// New, call Start (or Heartbeat in a loop of your own) and Admit/Establish/
// Renew/Release from the data plane.
type Tracker struct {
	cfg     Config
	store   *Store
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time

	fleets map[string]*fleet
	byConn sync.Map // conn id -> *fleet

	// Connection ids are this process's random prefix and a counter: unique
	// across restarts (a restarted tracker adopts its predecessor's ids)
	// without reading the system's random source per admission.
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
func New(cfg Config, store *Store, opts ...Option) (*Tracker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tracker config: %w", err)
	}
	t := &Tracker{cfg: cfg, store: store, log: slog.Default(), now: time.Now, fleets: map[string]*fleet{}, idPrefix: randomHex(6)}
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
	for _, fc := range cfg.Fleets {
		f := newFleet(fc, t.now())
		f.admitted = t.metrics.Admissions.WithLabelValues(fc.Name, "admitted", "")
		f.rejected = map[Reason]prometheus.Counter{}
		for _, r := range Reasons {
			f.rejected[r] = t.metrics.Admissions.WithLabelValues(fc.Name, "rejected", string(r))
		}
		t.fleets[fc.Name] = f
	}
	return t, nil
}

// Config is the tracker's configuration, defaults applied.
func (t *Tracker) Config() Config { return t.cfg }

// Store is the store the tracker writes to.
func (t *Tracker) Store() *Store { return t.store }

// conn is one connection this instance admitted: the local truth that every
// heartbeat re-publishes.
type conn struct {
	id, pod     string
	established bool
	admitted    time.Time
	renewed     time.Time
}

// gateAll is the weight a heartbeat takes of fleet.gate: all of it.
const gateAll = 1 << 30

type rejKey struct {
	reason Reason
	bucket int64
}

type fleet struct {
	cfg      FleetConfig
	limiter  *rate.Limiter
	admitted prometheus.Counter
	rejected map[Reason]prometheus.Counter

	// gate orders admissions against heartbeats: an admission holds one
	// unit from its script to its local record, a heartbeat holds all of
	// them while it publishes the local truth. Without it a heartbeat could
	// overwrite a count an admission had just made and not yet recorded,
	// and Redis would undercount for a whole heartbeat; releases hold it the
	// same way (see Release). A semaphore, not an RWMutex,
	// so that an admission waits for a heartbeat stuck on a slow Redis only
	// within its own deadline, then falls back.
	gate *semaphore.Weighted

	mu       sync.Mutex // guards everything below
	conns    map[string]*conn
	live     map[string]int // pod -> live connections of this instance
	est      map[string]int // pod -> established connections of this instance
	rej      map[rejKey]int64
	degraded bool
	epoch    string
	view     view
	rejoin   *rejoin // set while the others re-publish after Redis lost its data: refuse

	// joined is this process's first successful heartbeat; settled turns
	// true once every other live instance has heartbeated since, so that
	// all of them count this one when they share headroom in a fallback.
	joined  time.Time
	settled bool

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

// view is what the last successful heartbeat saw; the fallback decides from it.
type view struct {
	ok        bool
	at        time.Time // the heartbeat's time: this instance's lease ran InstanceTTL from it
	settled   bool      // every other instance knows this one (see fleet.settled)
	ids       []string  // the live instances, sorted
	instances int
	rank      int
	pods      []string       // placeable pods, sorted
	load      map[string]int // pod -> live connections, all instances
	mine      map[string]int // pod -> this instance's share of load
}

func newFleet(fc FleetConfig, now time.Time) *fleet {
	lim := rate.NewLimiter(rate.Limit(fc.RatePerSecond), fc.Burst)
	lim.SetBurstAt(now, fc.Burst)
	return &fleet{cfg: fc, limiter: lim, gate: semaphore.NewWeighted(gateAll), conns: map[string]*conn{}, live: map[string]int{}, est: map[string]int{}, rej: map[rejKey]int64{}}
}

func (t *Tracker) fleet(name string) (*fleet, error) {
	f, ok := t.fleets[name]
	if !ok {
		return nil, fmt.Errorf("fleet %q: %w", name, ErrUnknownFleet)
	}
	return f, nil
}

// Fleets lists the configured fleet names, sorted.
func (t *Tracker) Fleets() []string {
	out := make([]string, 0, len(t.fleets))
	for n := range t.fleets {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Admit decides one new connection of fleet: the local token bucket first,
// then one Redis script; while Redis is unreachable, the fallback.
func (t *Tracker) Admit(ctx context.Context, fleetName string) (Result, error) {
	start := time.Now()
	f, err := t.fleet(fleetName)
	if err != nil {
		return Result{}, fmt.Errorf("admit: %w", err)
	}
	res, err := t.admit(ctx, f)
	if err != nil {
		return res, err
	}
	t.metrics.AdmitSeconds.Observe(time.Since(start).Seconds())
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
		f.reject(ReasonRateLimit, now)
		return Result{Fleet: f.cfg.Name, Reason: ReasonRateLimit, RetryAfter: ceilSecond(d)}, nil
	}
	if f.redisUsable() {
		res, err := t.admitRedis(ctx, f, now)
		if err == nil {
			return res, nil
		}
		if ctx.Err() != nil {
			// The caller left; whatever the script did, the next heartbeat
			// publishes the truth again.
			return Result{}, fmt.Errorf("admit %s: %w", f.cfg.Name, ctx.Err())
		}
		// A heartbeat holding the gate past this admission's deadline is no
		// Redis failure: this one admission falls back, the fleet does not.
		if !errors.Is(err, errGateBusy) {
			t.redisFailed(f, "admit", err)
		}
	}
	return t.admitFallback(f, now), nil
}

func (t *Tracker) admitRedis(ctx context.Context, f *fleet, now time.Time) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.RedisTimeout)
	defer cancel()
	if err := f.gate.Acquire(ctx, 1); err != nil {
		return Result{}, fmt.Errorf("admit %s: %w (%v)", f.cfg.Name, errGateBusy, err)
	}
	defer f.gate.Release(1)
	a, err := t.store.Admit(ctx, f.cfg.Name, f.cfg.MaxConnectionsPerPod, f.cfg.Policy, t.cfg.InstanceID, now)
	if err != nil {
		return Result{}, err
	}
	if a.Pod == "" {
		return Result{Fleet: f.cfg.Name, Reason: a.Reason, RetryAfter: time.Duration(f.cfg.RetryAfter)}, nil
	}
	return t.record(f, a.Pod, now, false), nil
}

// record adds an admitted connection to the local truth.
func (t *Tracker) record(f *fleet, pod string, now time.Time, fallback bool) Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	return t.recordLocked(f, pod, now, fallback)
}

func (t *Tracker) recordLocked(f *fleet, pod string, now time.Time, fallback bool) Result {
	c := &conn{id: t.idPrefix + strconv.FormatUint(t.idSeq.Add(1), 36), pod: pod, admitted: now, renewed: now}
	f.conns[c.id] = c
	f.live[pod]++
	t.byConn.Store(c.id, f)
	return Result{Fleet: f.cfg.Name, Admitted: true, Conn: c.id, Pod: pod, Fallback: fallback}
}

// admitFallback decides from the last heartbeat's view while Redis is down.
//
// share: each pod's free headroom at the last heartbeat (cap - load) is split
// among the live instances, floor(headroom/n) each and the remainder to one
// instance more per unit, rotated by pod so no instance always gets it. An
// instance may hold what it held then plus its part: the parts add up to the
// headroom, so the instances together stay under the cap without talking.
// The instances' last heartbeats are not simultaneous, though, so each is
// also held to its part of the cap itself (split the same way): those parts
// add up to the cap whatever moment each view was taken at. When the fleet
// was empty both bounds are floor(cap/n) plus the shared remainder.
//
// An instance that joined so recently that some other instance has not
// heartbeated since (and so shares the headroom without it) takes no part:
// the others' parts already add up to the headroom. Nor does one whose
// lease has run out since its last heartbeat.
//
// open: as if the other instances admitted nothing since the heartbeat.
func (t *Tracker) admitFallback(f *fleet, now time.Time) Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	reject := Result{Fleet: f.cfg.Name, Reason: ReasonRedisDown, RetryAfter: time.Second, Fallback: true}
	// Once this instance's lease has run out, an instance or a scaler that
	// still reaches Redis may have reaped it and given its share away.
	expired := !now.Before(f.view.at.Add(t.cfg.InstanceTTL))
	if t.cfg.Fallback == FallbackClosed || !f.view.ok || f.rejoin != nil || (t.cfg.Fallback == FallbackShare && (!f.view.settled || expired)) {
		f.rejectLocked(ReasonRedisDown, now)
		return reject
	}
	v := f.view
	best, bestLoad := "", 0
	for _, pod := range v.pods {
		budget := f.cfg.MaxConnectionsPerPod - (v.load[pod] - v.mine[pod])
		if t.cfg.Fallback == FallbackShare {
			cap, spot := f.cfg.MaxConnectionsPerPod, podSpot(pod)
			budget = min(
				v.mine[pod]+headroomShare(cap-v.load[pod], v.instances, v.rank, spot),
				headroomShare(cap, v.instances, v.rank, spot))
		}
		held := f.heldLocked(pod)
		if held >= budget {
			continue
		}
		load := v.load[pod] - v.mine[pod] + held
		better := best == "" || (f.cfg.Policy == PolicyPack && load > bestLoad) || (f.cfg.Policy == PolicySpread && load < bestLoad)
		if better {
			best, bestLoad = pod, load
		}
	}
	if best == "" {
		f.rejectLocked(ReasonRedisDown, now)
		return reject
	}
	return t.recordLocked(f, best, now, true)
}

// podSpot places a pod in the rotation of the remainders: a hash of its
// address, so that every instance agrees on it whatever pod list it saw.
func podSpot(pod string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(pod))
	return int(h.Sum32() & 0x7fffffff)
}

// headroomShare is instance rank's part of headroom among n instances on the
// pod at spot podIndex: the parts of all ranks add up to headroom exactly.
func headroomShare(headroom, n, rank, podIndex int) int {
	if headroom <= 0 || n <= 0 || rank < 0 || rank >= n {
		return 0
	}
	share := headroom / n
	if (podIndex-rank%n+n)%n < headroom%n {
		share++
	}
	return share
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
// tracker released because its renewals were lost although Envoy still
// carries it. Counting it again tells the truth, even if its slot was
// given away meanwhile. ended says the entry reports the connection's end:
// an inherited slot is then given back, anything else needs nothing.
// ErrUnknownConn when there is nothing to take over.
func (t *Tracker) Adopt(fleetName, id, pod string, ended bool) error {
	f, err := t.fleet(fleetName)
	if err != nil {
		return fmt.Errorf("adopt: %w", err)
	}
	if err := ValidatePodAddr(pod); err != nil {
		return fmt.Errorf("adopt: connection %q: %w", id, err)
	}
	now := t.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, held := f.conns[id]; held {
		return nil
	}
	inherited := !strings.HasPrefix(id, t.idPrefix) && f.inherited[pod] > 0 && now.Before(f.inheritUntil)
	if ended {
		if !inherited {
			return fmt.Errorf("adopt: ended connection %q: %w", id, ErrUnknownConn)
		}
		if f.inherited[pod]--; f.inherited[pod] == 0 {
			delete(f.inherited, pod)
		}
		return nil // the next heartbeat publishes the release
	}
	if inherited {
		if f.inherited[pod]--; f.inherited[pod] == 0 {
			delete(f.inherited, pod)
		}
	}
	c := &conn{id: id, pod: pod, established: true, admitted: now, renewed: now}
	f.conns[id] = c
	f.live[pod]++
	f.est[pod]++
	t.byConn.Store(id, f)
	return nil
}

// Release frees a connection's slot: locally at once, in Redis by the release
// script (or, if Redis is down, by the next heartbeat).
func (t *Tracker) Release(ctx context.Context, id string) error {
	v, ok := t.byConn.Load(id)
	if !ok {
		return fmt.Errorf("release: connection %q: %w", id, ErrUnknownConn)
	}
	f := v.(*fleet)
	rctx, cancel := context.WithTimeout(ctx, t.cfg.RedisTimeout)
	defer cancel()
	// Like an admission, a release holds the gate from its local update to
	// its script: a heartbeat in between would publish the count without
	// the connection and the script would then take it off a second time.
	// Without the gate in time, only the local truth changes and the next
	// heartbeat publishes it.
	gated := f.redisUsable() && f.gate.Acquire(rctx, 1) == nil
	if gated {
		defer f.gate.Release(1)
	}
	c := f.remove(id)
	if c == nil {
		return fmt.Errorf("release: connection %q: %w", id, ErrUnknownConn)
	}
	t.byConn.Delete(id)
	if !gated {
		return nil
	}
	pending := 0
	if !c.established {
		pending = 1
	}
	if _, err := t.store.Release(rctx, f.cfg.Name, t.cfg.InstanceID, c.pod, 1, pending); err != nil && ctx.Err() == nil {
		t.redisFailed(f, "release", err)
	}
	return nil
}

func (f *fleet) remove(id string) *conn {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.conns[id]
	if !ok {
		return nil
	}
	f.dropLocked(c)
	return c
}

func (f *fleet) dropLocked(c *conn) {
	delete(f.conns, c.id)
	if f.live[c.pod]--; f.live[c.pod] <= 0 {
		delete(f.live, c.pod)
	}
	if c.established {
		if f.est[c.pod]--; f.est[c.pod] <= 0 {
			delete(f.est, c.pod)
		}
	}
}

func (f *fleet) reject(r Reason, now time.Time) {
	f.mu.Lock()
	f.rejectLocked(r, now)
	f.mu.Unlock()
}

// rejectLocked buffers a rejection the admit script did not record; the next
// heartbeat flushes it.
func (f *fleet) rejectLocked(r Reason, now time.Time) {
	f.rej[rejKey{r, Bucket(now)}]++
}

// redisUsable says whether admissions go through Redis: after a successful
// heartbeat (which renewed this instance's lease and read what a previous
// run left), until a Redis call fails, and not while the other instances
// re-publish their counts after Redis lost its data.
func (f *fleet) redisUsable() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.view.ok && !f.degraded && f.rejoin == nil
}

func (t *Tracker) redisFailed(f *fleet, op string, err error) {
	t.metrics.RedisErrors.WithLabelValues(op).Inc()
	f.mu.Lock()
	was := f.degraded
	f.degraded = true
	f.mu.Unlock()
	if !was {
		t.metrics.Degraded.WithLabelValues(f.cfg.Name).Set(1)
		t.log.Warn("redis unreachable, admitting from local state", "fleet", f.cfg.Name, "op", op, "fallback", string(t.cfg.Fallback), "err", err)
	}
}

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
