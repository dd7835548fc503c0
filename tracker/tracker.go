package tracker

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// Errors of the admission path that callers turn into client errors.
var (
	ErrUnknownFleet = errors.New("unknown fleet")
	ErrUnknownConn  = errors.New("unknown connection id")
	// ErrNotAdoptable: an access-log entry names a connection this instance
	// cannot account for (an id it never issued, beyond what a previous run
	// left, or a pod outside the fleet's registry); it is not counted.
	ErrNotAdoptable = errors.New("not this instance's to adopt")
)

// Tracker is one Envoy instance's side of the shared state. Create it with
// New, call Start (or Heartbeat in a loop of your own) and Admit/Establish/
// Renew/Release from the data plane.
type Tracker struct {
	cfg     Config
	store   *store.Store
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time

	// fleets holds every fleet, the retiring ones too (see Apply), by
	// name; each has its groups (one unless sharded). The map is never
	// changed, Apply swaps in a new one.
	fleets  atomic.Pointer[map[string]*family]
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

	// topology is how the store reaches Redis, and repl what the
	// replication check last saw (replication.go).
	topology store.Topology
	repl     replicationState
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
	if store != nil && cfg.WaitReplicas > 0 {
		// Admissions wait for the replicas (PROTOCOL.md, "Replication and
		// failover"); releases and heartbeats do not.
		store = store.WithWait(cfg.WaitReplicas, cfg.WaitTimeout)
	}
	t := &Tracker{cfg: cfg, store: store, log: slog.Default(), now: time.Now, kick: make(chan struct{}, 1), idTag: instanceTag(cfg.InstanceID),
		repl: replicationState{checked: map[string]string{}, safe: map[string]float64{}}}
	if store != nil {
		t.topology = store.Topology()
	}
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
	byName := map[string]*family{}
	for _, fc := range cfg.Fleets {
		byName[fc.Name] = t.newFamily(fc)
	}
	t.fleets.Store(&byName)
	return t, nil
}

// newFamily makes fleet fc's state on this instance: its groups, each a
// fleet of its own to Redis, and what they share.
func (t *Tracker) newFamily(fc fleets.Fleet) *family {
	lim := rate.NewLimiter(rateOf(fc), fc.Burst)
	lim.SetBurstAt(t.now(), fc.Burst)
	fam := &family{name: fc.Name, limiter: lim}
	fam.cfg.Store(&fc)
	t.metrics.addFleet(fc.Name)
	fam.admitted = t.metrics.Admissions.WithLabelValues(fc.Name, "admitted", "")
	fam.rejected = map[store.Reason]prometheus.Counter{}
	for _, r := range store.Reasons {
		fam.rejected[r] = t.metrics.Admissions.WithLabelValues(fc.Name, "rejected", string(r))
	}
	fam.hintsTaken = t.metrics.Hints.WithLabelValues(fc.Name, "taken")
	fam.hintsRefused = t.metrics.Hints.WithLabelValues(fc.Name, "refused")
	n := max(fc.Shards, 1)
	for k := range n {
		fam.groups = append(fam.groups, t.newFleet(fam, k, groupConf(fc, k, n)))
	}
	return fam
}

// groupConf is group k's part of fc (of n groups): its static pods only.
func groupConf(fc fleets.Fleet, k, n int) fleets.Fleet {
	if n <= 1 {
		return fc
	}
	var pods []string
	for _, p := range fc.Pods {
		if fleets.GroupOf(p, n) == k {
			pods = append(pods, p)
		}
	}
	fc.Pods = pods
	return fc
}

func (t *Tracker) newFleet(fam *family, k int, fc fleets.Fleet) *fleet {
	f := newFleet(fc, fleets.GroupName(fc.Name, k))
	f.fam, f.group, f.label = fam, k, fam.name
	f.stalled = store.NewStalled(t.cfg.InstanceTTL)
	f.admits = &batcher[struct{}, admission]{max: maxBatch, timeout: t.cfg.RedisTimeout, send: t.sendAdmits(f),
		size: t.metrics.BatchSize.WithLabelValues("admit")}
	f.releases = &batcher[releaseReq, struct{}]{max: maxBatch, timeout: t.cfg.RedisTimeout, send: t.sendReleases(f),
		size: t.metrics.BatchSize.WithLabelValues("release"), linger: t.cfg.ReleaseLinger}
	return f
}

// maxBatch bounds the admissions or releases of one script call, and so
// the time Redis spends in it.
const maxBatch = 64

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

// family finds a fleet by name, a retiring one too: its connections still
// end, renew and are adopted.
func (t *Tracker) family(name string) (*family, error) {
	fam, ok := (*t.fleets.Load())[name]
	if !ok {
		return nil, fmt.Errorf("fleet %q: %w", name, ErrUnknownFleet)
	}
	return fam, nil
}

// fleet finds a group by its name (fleets.GroupName): for an unsharded
// fleet, the fleet itself.
func (t *Tracker) fleet(name string) (*fleet, error) {
	fleetName, k, ok := fleets.SplitGroup(name)
	fam, err := t.family(fleetName)
	if err != nil || !ok || k >= len(fam.groups) {
		return nil, fmt.Errorf("fleet %q: %w", name, ErrUnknownFleet)
	}
	return fam.groups[k], nil
}

// Fleets lists the configured fleet names, sorted (not the retiring ones).
func (t *Tracker) Fleets() []string {
	var out []string
	for n, fam := range *t.fleets.Load() {
		if !fam.retired.Load() {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// allFleets lists every group of every fleet, retiring ones included,
// sorted by name (so a fleet's group 0 comes before its others), except
// the groups of a retiring fleet that left Redis already.
func (t *Tracker) allFleets() []*fleet {
	m := *t.fleets.Load()
	out := make([]*fleet, 0, len(m))
	for _, fam := range m {
		for _, f := range fam.groups {
			if !f.gone.Load() {
				out = append(out, f)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// LocalCounts returns this instance's live connections per pod of fleet
// (all its groups: a pod is in one).
func (t *Tracker) LocalCounts(fleetName string) (map[string]int, error) {
	fam, err := t.family(fleetName)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, f := range fam.groups {
		f.mu.Lock()
		for p, n := range f.live {
			out[p] += n
		}
		f.mu.Unlock()
	}
	return out, nil
}

func ceilSecond(d time.Duration) time.Duration {
	return time.Duration(math.Ceil(d.Seconds())) * time.Second
}
