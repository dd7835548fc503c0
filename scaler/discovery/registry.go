package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// Store is what the Registry needs of the fleets' state in Redis:
// *store.Store.
type Store interface {
	// SetPods replaces the fleet's pod registry.
	SetPods(ctx context.Context, fleet string, pods []fleets.Pod) error
	// Summary reads the fleet's epoch (and counts).
	Summary(ctx context.Context, fleet string, now time.Time) (store.Summary, error)
	// Snapshot reads the registry's draining flags (and the rest).
	Snapshot(ctx context.Context, fleet string, now time.Time) (store.Snapshot, error)
}

// Layouts is implemented by a Store that records the layout (shards) a
// fleet runs in Redis, as *store.Store does: Layout records n unless a
// layout is recorded already, and returns the one recorded. A Registry on
// a Store without it writes without the guard.
type Layouts interface {
	Layout(ctx context.Context, fleet string, n int) (int, error)
}

// ErrLayoutMismatch: the fleet's shards in this scaler's fleets file are
// not the layout Redis records for it, so its pods would be written into
// groups the trackers do not read (or read under another split).
var ErrLayoutMismatch = errors.New("layout mismatch")

// Registry is the in-process pod registry of the fleets that discovery
// manages. Discovery sets what the EndpointSlices say (SetEndpoints), the
// pod-deletion-cost hook sets which pods drain (SetDraining); the Registry
// merges both and is the only writer of the fleets' registries in Redis.
//
// A fleet is managed, and written, only after its first SetEndpoints: a
// fleet without discovery keeps its static pod list.
type Registry struct {
	store   Store
	log     *slog.Logger
	clock   clock.WithTicker
	metrics *Metrics

	// Resync is the longest time between two writes of a fleet's registry
	// even when nothing changed, repairing writes lost to anything the
	// epoch check does not see. Default 1m.
	Resync time.Duration
	// CheckInterval is how often Run compares each fleet's epoch and pod
	// count in Redis with what it wrote. Default 5s.
	CheckInterval time.Duration

	writeMu sync.Mutex // one registry write at a time, so writes never reorder
	// mismatch is, under writeMu, the layout last refused per fleet: the
	// error is logged once per mismatch, not at every check.
	mismatch map[string]int

	mu     sync.Mutex
	fleets map[string]*fleetEntry
	kick   chan struct{}
}

type fleetEntry struct {
	endpoints    map[string]fleets.Pod // address -> pod as discovery sees it
	endpointsSet bool
	draining     map[string]bool
	// ownsDrain is set once the hook decided the fleet's draining flags in
	// this process; until then writes keep the flags found in Redis, which
	// another scaler replica may have set.
	ownsDrain bool
	// shards is the fleet's shards setting (fleets file): its pods are
	// written to that many groups, each pod to fleets.GroupOf's.
	shards    int
	gen       uint64 // bumped on every change
	written   uint64 // gen of the last successful write
	epoch     string // epochs of the groups seen right after the last write, joined
	pods      int64  // number of pods in the last write
	lastWrite time.Time
}

// RegistryOption configures a Registry.
type RegistryOption func(*Registry)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) RegistryOption { return func(r *Registry) { r.log = l } }

// WithClock sets the clock (default the real one).
func WithClock(c clock.WithTicker) RegistryOption { return func(r *Registry) { r.clock = c } }

// WithMetrics sets the collectors (default unregistered ones).
func WithMetrics(m *Metrics) RegistryOption { return func(r *Registry) { r.metrics = m } }

// NewRegistry returns an empty Registry writing through store.
func NewRegistry(store Store, opts ...RegistryOption) *Registry {
	r := &Registry{
		store: store, log: slog.Default(), clock: clock.RealClock{},
		Resync: time.Minute, CheckInterval: 5 * time.Second,
		fleets: map[string]*fleetEntry{}, kick: make(chan struct{}, 1), mismatch: map[string]int{},
	}
	for _, o := range opts {
		o(r)
	}
	if r.metrics == nil {
		r.metrics = NewMetrics(nil)
	}
	return r
}

func (r *Registry) entry(fleet string) *fleetEntry {
	e := r.fleets[fleet]
	if e == nil {
		e = &fleetEntry{endpoints: map[string]fleets.Pod{}, draining: map[string]bool{}, shards: 1}
		r.fleets[fleet] = e
	}
	return e
}

func (r *Registry) changed(e *fleetEntry) {
	e.gen++
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// SetShards sets how many groups fleet's pods are split into (the fleet's
// shards; default 1). Discovery sets it before the fleet's endpoints, so
// the first write already splits them.
func (r *Registry) SetShards(fleet string, n int) {
	n = max(n, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entry(fleet)
	if e.shards == n {
		return
	}
	e.shards = n
	r.changed(e)
}

// fleet is the fleet as the store reads it: its name and shards.
func (e *fleetEntry) fleet(name string) fleets.Fleet {
	return fleets.Fleet{Name: name, Shards: e.shards}
}

// SetEndpoints replaces the pods discovery sees for fleet (their Draining
// field is ignored) and makes fleet managed.
func (r *Registry) SetEndpoints(fleet string, pods []fleets.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entry(fleet)
	next := make(map[string]fleets.Pod, len(pods))
	for _, p := range pods {
		p.Draining = false
		next[p.Addr] = p
	}
	if e.endpointsSet && sameEndpoints(e.endpoints, next) {
		return
	}
	e.endpoints, e.endpointsSet = next, true
	r.changed(e)
}

func sameEndpoints(a, b map[string]fleets.Pod) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// SetDraining replaces the set of fleet's pods (by address) that admission
// must stop placing connections on; nil undrains them all.
func (r *Registry) SetDraining(fleet string, addrs []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entry(fleet)
	next := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		next[a] = true
	}
	same := e.ownsDrain && len(next) == len(e.draining)
	for a := range next {
		same = same && e.draining[a]
	}
	if same {
		return
	}
	e.draining, e.ownsDrain = next, true
	r.changed(e)
}

// Pods returns fleet's merged registry, sorted by address. Until this
// process decided the draining flags, Draining is false everywhere.
func (r *Registry) Pods(fleet string) []fleets.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.fleets[fleet]
	if e == nil {
		return nil
	}
	return e.merged()
}

func (e *fleetEntry) merged() []fleets.Pod {
	out := make([]fleets.Pod, 0, len(e.endpoints))
	for _, p := range e.endpoints {
		p.Draining = e.draining[p.Addr]
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// Fleets lists the managed fleets, sorted.
func (r *Registry) Fleets() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.fleets))
	for f, e := range r.fleets {
		if e.managed() {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// managed: discovery has reported the fleet at least once (a SetDraining
// alone must not wipe a registry discovery has not seen yet).
func (e *fleetEntry) managed() bool { return e.endpointsSet }

// Shards is fleet's shards as the Registry writes it (1 for a fleet it
// does not know).
func (r *Registry) Shards(fleet string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.fleets[fleet]; e != nil {
		return e.shards
	}
	return 1
}

// Publish writes fleet's merged registry to Redis now: each group of the
// fleet gets the registry of its own pods (fleets.GroupOf), after the
// layout guard (checkLayout) let it.
func (r *Registry) Publish(ctx context.Context, fleet string) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	e := r.fleets[fleet]
	if e == nil || !e.managed() {
		r.mu.Unlock()
		return nil
	}
	pods, gen, owns, fc := e.merged(), e.gen, e.ownsDrain, e.fleet(fleet)
	r.mu.Unlock()

	if err := r.checkLayout(ctx, fc); err != nil {
		result := "error"
		if errors.Is(err, ErrLayoutMismatch) {
			result = "layout_mismatch"
		}
		r.metrics.Publishes.WithLabelValues(fleet, result).Inc()
		return err
	}
	if !owns {
		if err := r.keepDraining(ctx, fc, pods); err != nil {
			r.metrics.Publishes.WithLabelValues(fleet, "error").Inc()
			return err
		}
	}
	groups := fc.GroupNames()
	byGroup := splitPods(pods, len(groups))
	for k, g := range groups {
		if err := r.store.SetPods(ctx, g, byGroup[k]); err != nil {
			r.metrics.Publishes.WithLabelValues(fleet, "error").Inc()
			return fmt.Errorf("publish pods of %s: %w", fleet, err)
		}
	}
	now := r.clock.Now()
	epoch, _, err := r.groupsState(ctx, fc, now)
	if err != nil {
		r.metrics.Publishes.WithLabelValues(fleet, "error").Inc()
		return fmt.Errorf("publish pods of %s: read epoch: %w", fleet, err)
	}
	r.metrics.Publishes.WithLabelValues(fleet, "ok").Inc()
	r.countPods(fleet, pods)

	r.mu.Lock()
	defer r.mu.Unlock()
	e.written, e.epoch, e.pods, e.lastWrite = gen, epoch, int64(len(pods)), now
	return nil
}

// splitPods puts each pod in its group of n (fleets.GroupOf). A group with
// no pod gets an empty list, so that a pod moved away or gone is removed
// from it too.
func splitPods(pods []fleets.Pod, n int) [][]fleets.Pod {
	out := make([][]fleets.Pod, n)
	for k := range out {
		out[k] = []fleets.Pod{}
	}
	for _, p := range pods {
		k := fleets.GroupOf(p.Addr, n)
		out[k] = append(out[k], p)
	}
	return out
}

// groupsState reads the epochs (joined) and the pod count of every group
// of fc: what Reconcile compares with its last write.
func (r *Registry) groupsState(ctx context.Context, fc fleets.Fleet, now time.Time) (string, int64, error) {
	var (
		epochs []string
		pods   int64
	)
	for _, g := range fc.GroupNames() {
		sum, err := r.store.Summary(ctx, g, now)
		if err != nil {
			return "", 0, err
		}
		epochs = append(epochs, sum.Epoch)
		pods += sum.Pods
	}
	return strings.Join(epochs, ","), pods, nil
}

// checkLayout refuses a write when Redis records another layout for the
// fleet than its shards here (a fleets file changed on the scaler before
// the fleet was resharded, or a scaler of another version): the pods would
// land in groups the trackers do not admit from. The first writer of a
// fleet records its layout. Redis' layout wins: the operator fixes the
// fleets file (or reshards), the scaler does not.
func (r *Registry) checkLayout(ctx context.Context, fc fleets.Fleet) error {
	l, ok := r.store.(Layouts)
	if !ok {
		return nil
	}
	recorded, err := l.Layout(ctx, fc.Name, fc.Shards)
	if err != nil {
		return fmt.Errorf("publish pods of %s: read its layout: %w", fc.Name, err)
	}
	if recorded == fc.Shards {
		delete(r.mismatch, fc.Name)
		r.metrics.LayoutMismatch.WithLabelValues(fc.Name).Set(0)
		return nil
	}
	r.metrics.LayoutMismatch.WithLabelValues(fc.Name).Set(1)
	if r.mismatch[fc.Name] == recorded {
		return fmt.Errorf("publish pods of %s: shards %d, but Redis records layout %d: %w", fc.Name, fc.Shards, recorded, ErrLayoutMismatch)
	}
	r.mismatch[fc.Name] = recorded
	r.log.Error("pod registry not written: the fleet's shards differ from the layout Redis records for it; set shards to the recorded layout in the fleets file, or reshard the fleet (README, \"Sharded fleets\")",
		"fleet", fc.Name, "shards", fc.Shards, "recorded_layout", recorded)
	return fmt.Errorf("publish pods of %s: shards %d, but Redis records layout %d: set shards: %d in the fleets file or reshard the fleet: %w",
		fc.Name, fc.Shards, recorded, recorded, ErrLayoutMismatch)
}

// keepDraining copies the draining flags another replica wrote into pods,
// from every group of fc.
func (r *Registry) keepDraining(ctx context.Context, fc fleets.Fleet, pods []fleets.Pod) error {
	draining := map[string]bool{}
	for _, g := range fc.GroupNames() {
		snap, err := r.store.Snapshot(ctx, g, r.clock.Now())
		if err != nil {
			return fmt.Errorf("publish pods of %s: read draining flags: %w", fc.Name, err)
		}
		for a, p := range snap.Pods {
			draining[a] = draining[a] || p.Draining
		}
	}
	for i := range pods {
		pods[i].Draining = draining[pods[i].Addr]
	}
	return nil
}

func (r *Registry) countPods(fleet string, pods []fleets.Pod) {
	var ready, notReady, draining float64
	for _, p := range pods {
		switch {
		case !p.Ready:
			notReady++
		case p.Draining:
			draining++
		default:
			ready++
		}
	}
	r.metrics.Endpoints.WithLabelValues(fleet, "ready").Set(ready)
	r.metrics.Endpoints.WithLabelValues(fleet, "not_ready").Set(notReady)
	r.metrics.Endpoints.WithLabelValues(fleet, "draining").Set(draining)
}

// Reconcile writes every managed fleet whose registry in Redis may differ
// from the Registry: changed since the last write, a new epoch or another
// pod count in Redis (Redis lost its data), or Resync elapsed.
func (r *Registry) Reconcile(ctx context.Context) error {
	var errs []error
	for _, fleet := range r.Fleets() {
		stale, err := r.stale(ctx, fleet)
		if err == nil && stale {
			err = r.Publish(ctx, fleet)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Registry) stale(ctx context.Context, fleet string) (bool, error) {
	now := r.clock.Now()
	r.mu.Lock()
	e := r.fleets[fleet]
	dirty := e.gen != e.written || now.Sub(e.lastWrite) >= r.Resync
	epoch, pods, fc := e.epoch, e.pods, e.fleet(fleet)
	r.mu.Unlock()
	if dirty {
		return true, nil
	}
	gotEpoch, gotPods, err := r.groupsState(ctx, fc, now)
	if err != nil {
		return false, fmt.Errorf("check pods of %s: %w", fleet, err)
	}
	return gotEpoch != epoch || gotPods != pods, nil
}

// publishDirty writes the fleets changed since their last write.
func (r *Registry) publishDirty(ctx context.Context) error {
	var errs []error
	for _, fleet := range r.Fleets() {
		r.mu.Lock()
		e := r.fleets[fleet]
		dirty := e.gen != e.written
		r.mu.Unlock()
		if dirty {
			errs = append(errs, r.Publish(ctx, fleet))
		}
	}
	return errors.Join(errs...)
}

// Run writes changes as they come and reconciles every CheckInterval until
// ctx ends. Failed writes are logged and retried at the next check.
func (r *Registry) Run(ctx context.Context) {
	t := r.clock.NewTicker(r.CheckInterval)
	defer t.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
			err = r.publishDirty(ctx)
		case <-t.C():
			err = r.Reconcile(ctx)
		}
		if err != nil && ctx.Err() == nil {
			r.log.Warn("pod registry not written; retrying at the next check", "err", err)
		}
	}
}
