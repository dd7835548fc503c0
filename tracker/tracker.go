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
		repl: replicationState{checked: map[string]string{}}}
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

func ceilSecond(d time.Duration) time.Duration {
	return time.Duration(math.Ceil(d.Seconds())) * time.Second
}
