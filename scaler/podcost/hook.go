package podcost

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/store"
)

// CostAnnotation is the annotation the ReplicaSet controller reads to pick
// which pods to delete first on a scale-down (lowest cost first).
const CostAnnotation = "controller.kubernetes.io/pod-deletion-cost"

// Store is what the Hook needs of the fleets' state in Redis: *store.Store.
type Store interface {
	// Snapshot reads the fleet's pods, loads and instances.
	Snapshot(ctx context.Context, fleet string, now time.Time) (store.Snapshot, error)
	// SetScaleDown publishes the scale-down order, first to go first.
	SetScaleDown(ctx context.Context, fleet string, pods []string) error
	// ClearScaleDown removes it.
	ClearScaleDown(ctx context.Context, fleet string) error
}

// Hook prepares the scale-downs of the fleets whose pods discovery knows.
// It implements the scaler's ScaleDownGate.
type Hook struct {
	client    kubernetes.Interface
	namespace string
	pods      cache.SharedIndexInformer
	lister    corelisters.PodLister
	store     Store
	reg       *discovery.Registry
	log       *slog.Logger
	clock     clock.PassiveClock
	metrics   *Metrics
	scaling   AutoscalingSource

	settle, minInterval, backoffBase, backoffMax time.Duration

	mu      sync.Mutex // held for a whole Gate: one decision at a time
	drains  map[string]*drain
	patches map[string]*patchState // pod name -> what was sent
}

// drain is one fleet's scale-down in preparation.
type drain struct {
	addrs      []string
	members    []string         // address and pod name of each: an address may pass to a new pod
	costs      map[string]int32 // draining pod name -> the cost it must show
	observedAt time.Time        // when the informer first showed every cost; zero until then
	released   bool
}

type patchState struct {
	sent     string // the annotation's value; "" removed it
	ok       bool   // sent was accepted by the API server
	lastSent time.Time
	failures int
	retryAt  time.Time
}

// Option configures a Hook.
type Option func(*Hook)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(h *Hook) { h.log = l } }

// WithClock sets the clock (default the real one).
func WithClock(c clock.PassiveClock) Option { return func(h *Hook) { h.clock = c } }

// WithMetrics sets the collectors (default unregistered ones).
func WithMetrics(m *Metrics) Option { return func(h *Hook) { h.metrics = m } }

// WithSettle sets how long the costs must have been observed before the
// ReplicaSet controller may act on them (default 15s): it reads its own
// cache, which may lag the scaler's. The HPA's scale-down stabilization
// window counts toward it: the HPA scales down only once the lower number
// has been reported for the whole window, so the hook holds only for
// settle - window (nothing when the window is longer).
func WithSettle(d time.Duration) Option { return func(h *Hook) { h.settle = d } }

// WithAutoscaling sets where the hook learns a fleet's minimum replicas
// and stabilization window (default: the namespace's ScaledObjects, read
// through the client's REST client).
func WithAutoscaling(s AutoscalingSource) Option { return func(h *Hook) { h.scaling = s } }

// WithMinPatchInterval sets the shortest time between two patches of one
// pod (default 10s).
func WithMinPatchInterval(d time.Duration) Option { return func(h *Hook) { h.minInterval = d } }

// WithBackoff sets the retry delay after a pod's first failed patch and its
// ceiling; it doubles with every further failure (default 1s, 2m).
func WithBackoff(base, ceiling time.Duration) Option {
	return func(h *Hook) { h.backoffBase, h.backoffMax = base, ceiling }
}

// New returns a Hook patching pods of namespace. pods is the namespace's
// pod informer: the caller starts its factory; the Hook reads what the
// informer has observed before it lets a scale-down through.
func New(client kubernetes.Interface, pods coreinformers.PodInformer, namespace string, store Store, reg *discovery.Registry, opts ...Option) *Hook {
	h := &Hook{
		client: client, namespace: namespace, pods: pods.Informer(), lister: pods.Lister(),
		store: store, reg: reg, log: slog.Default(), clock: clock.RealClock{},
		settle: 15 * time.Second, minInterval: 10 * time.Second,
		backoffBase: time.Second, backoffMax: 2 * time.Minute,
		drains: map[string]*drain{}, patches: map[string]*patchState{},
	}
	for _, o := range opts {
		o(h)
	}
	if h.metrics == nil {
		h.metrics = NewMetrics(nil)
	}
	// A fake clientset's REST client is a nil pointer: no source then.
	if rc, ok := client.CoreV1().RESTClient().(*rest.RESTClient); h.scaling == nil && ok && rc != nil {
		h.scaling = NewScaledObjects(rc, namespace, 10*time.Second)
	}
	return h
}

// Gate returns the replica count to report for fleet: recommended at once
// when no pod will go (it is not below ready, or ready is at the HPA's
// minimum replicas), undraining whatever was drained; else ready until the
// ready - max(recommended, minimum) emptiest pods are draining and their
// costs have been observed for the settle delay (less the HPA's
// stabilization window). When the minimum cannot be known (the
// ScaledObject unreadable, or none names the fleet), it reports ready and
// drains nothing: the pods the HPA would remove are unknown, and a drained
// pod the HPA keeps refuses new connections for nothing.
func (h *Hook) Gate(ctx context.Context, fleet string, ready, recommended int) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if recommended >= ready {
		h.undrain(ctx, fleet)
		return recommended
	}
	as, known := h.autoscaling(ctx, fleet)
	if !known {
		h.undrain(ctx, fleet)
		h.metrics.Holding.WithLabelValues(fleet).Set(1)
		return ready
	}
	keep := max(recommended, hpaMinReplicas(as))
	if keep >= ready {
		h.undrain(ctx, fleet)
		return recommended
	}
	if h.prepare(ctx, fleet, ready-keep, as) {
		h.metrics.Holding.WithLabelValues(fleet).Set(0)
		return recommended
	}
	h.metrics.Holding.WithLabelValues(fleet).Set(1)
	return ready
}

// hpaMinReplicas is the fewest pods the HPA of as keeps: KEDA gives its
// HPA minReplicas max(minReplicaCount, 1). With minReplicaCount 0 the last
// pod is not the HPA's to remove: KEDA deletes it on deactivation, after
// IsActive has been false (no live connection, no recent rejection) for
// the cooldown period, so there is nothing on it to cut. Draining it
// earlier would refuse the first client of that whole cooldown (no_pods)
// and, no pod being placeable, make the scaler ask for a second pod.
func hpaMinReplicas(as Autoscaling) int { return max(as.MinReplicas, 1) }

// autoscaling is fleet's Autoscaling and whether it is known. Without a
// source (a client with no API server behind it, as in tests) it is KEDA's
// defaults: a floor of one pod and no window.
func (h *Hook) autoscaling(ctx context.Context, fleet string) (Autoscaling, bool) {
	if h.scaling == nil {
		return Autoscaling{MinReplicas: 1}, true
	}
	as, err := h.scaling.Autoscaling(ctx, fleet)
	switch {
	case err != nil:
		h.log.Warn("ScaledObject not read; scale-down held, nothing drained: give the scaler get and list on scaledobjects.keda.sh",
			"fleet", fleet, "namespace", h.namespace, "err", err)
	case !as.Known:
		h.log.Warn("no ScaledObject in the namespace scales this fleet; scale-down held, nothing drained",
			"fleet", fleet, "namespace", h.namespace)
	}
	return as, err == nil && as.Known
}

// prepare drains n pods of fleet, patches costs, and reports whether the
// scale-down may go ahead.
func (h *Hook) prepare(ctx context.Context, fleet string, n int, as Autoscaling) bool {
	now := h.clock.Now()
	if !h.pods.HasSynced() {
		return false
	}
	cands, err := h.candidates(ctx, fleet, now)
	if err != nil {
		h.log.Warn("scale-down held: cannot rank pods", "fleet", fleet, "err", err)
		return false
	}
	n = min(n, len(cands))
	d := h.drains[fleet]
	addrs, members := make([]string, n), make([]string, n)
	for i := range n {
		addrs[i], members[i] = cands[i].addr, cands[i].addr+" "+cands[i].name
	}
	if d == nil || !sameSet(d.members, members) {
		// Kubernetes removing the prepared pods one by one shrinks the set:
		// what is left was already prepared, so the release stands. A hold
		// at every step would reset the HPA's stabilization window each time.
		keep := d != nil && d.released && subset(members, d.members)
		d = &drain{addrs: addrs, members: members, released: keep}
		h.drains[fleet] = d
	}
	d.costs = map[string]int32{}
	for i, c := range cands {
		v := cost(c.live, i < n)
		if i < n {
			d.costs[c.name] = v
		}
		h.patch(ctx, fleet, c.name, strconv.Itoa(int(v)), now)
	}
	h.metrics.Draining.WithLabelValues(fleet).Set(float64(n))
	h.writeScaledown(ctx, fleet, cands)

	h.reg.SetDraining(fleet, addrs)
	if err := h.reg.Publish(ctx, fleet); err != nil {
		h.log.Warn("scale-down held: draining flags not written", "fleet", fleet, "err", err)
		return false
	}
	if d.released {
		return true
	}
	if !h.observed(d) {
		d.observedAt = time.Time{}
		return false
	}
	if d.observedAt.IsZero() {
		d.observedAt = now
	}
	d.released = !now.Before(d.observedAt.Add(max(h.settle-as.ScaleDownWindow, 0)))
	return d.released
}

// subset reports whether every address of a is in b.
func subset(a, b []string) bool {
	in := make(map[string]bool, len(b))
	for _, x := range b {
		in[x] = true
	}
	for _, x := range a {
		if !in[x] {
			return false
		}
	}
	return true
}

// candidates are fleet's ready, named pods, ranked. A sharded fleet's
// pods are ranked across all its groups (each group's snapshot gives its
// own pods' loads): the emptiest pods go first wherever they live, and one
// order covers the fleet, as one ReplicaSet scales it.
func (h *Hook) candidates(ctx context.Context, fleet string, now time.Time) ([]candidate, error) {
	fc := fleets.Fleet{Name: fleet, Shards: h.reg.Shards(fleet)}
	groups := make([]store.Snapshot, 0, fc.Shards)
	for _, g := range fc.GroupNames() {
		snap, err := h.store.Snapshot(ctx, g, now)
		if err != nil {
			return nil, err
		}
		groups = append(groups, snap)
	}
	snap := store.MergeSnapshots(fleet, groups)
	var out []candidate
	for _, p := range h.reg.Pods(fleet) {
		if !p.Ready || p.Name == "" {
			continue
		}
		c := candidate{addr: p.Addr, name: p.Name, live: snap.Load[p.Addr], draining: p.Draining}
		if pod, err := h.lister.Pods(h.namespace).Get(p.Name); err == nil {
			c.created = pod.CreationTimestamp.Time
		}
		out = append(out, c)
	}
	rank(out)
	return out, nil
}

// observed reports whether the informer shows every draining pod's cost
// (a pod it no longer knows is gone, which is what the cost was for).
func (h *Hook) observed(d *drain) bool {
	for name, want := range d.costs {
		pod, err := h.lister.Pods(h.namespace).Get(name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil || pod.Annotations[CostAnnotation] != strconv.Itoa(int(want)) {
			return false
		}
	}
	return true
}

// patch sets pod's cost to v ("": removes it) unless it already shows it or
// was sent it, the pod was patched too recently, or it is backing off
// after a failure.
func (h *Hook) patch(ctx context.Context, fleet, name, v string, now time.Time) {
	ps := h.patches[name]
	if ps == nil {
		ps = &patchState{}
		h.patches[name] = ps
	}
	if ps.ok && ps.sent == v {
		return
	}
	if pod, err := h.lister.Pods(h.namespace).Get(name); err == nil && pod.Annotations[CostAnnotation] == v {
		ps.sent, ps.ok = v, true
		return
	}
	if now.Before(ps.retryAt) || (ps.ok && now.Sub(ps.lastSent) < h.minInterval) {
		return
	}
	body := fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, CostAnnotation)
	if v != "" {
		body = fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, CostAnnotation, v)
	}
	_, err := h.client.CoreV1().Pods(h.namespace).Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{})
	ps.lastSent = now
	if err == nil {
		ps.sent, ps.ok, ps.failures, ps.retryAt = v, true, 0, time.Time{}
		h.metrics.Patches.WithLabelValues(fleet, "ok").Inc()
		return
	}
	result := "error"
	switch {
	case apierrors.IsForbidden(err):
		result = "forbidden"
	case apierrors.IsConflict(err):
		result = "conflict"
	case apierrors.IsNotFound(err):
		// Gone: nothing to retry; discovery drops it from the registry.
		delete(h.patches, name)
		h.metrics.Patches.WithLabelValues(fleet, "not_found").Inc()
		return
	}
	ps.ok = false
	ps.failures++
	wait := min(h.backoffBase<<min(ps.failures-1, 20), h.backoffMax)
	ps.retryAt = now.Add(wait)
	h.metrics.Patches.WithLabelValues(fleet, result).Inc()
	h.log.Warn("pod-deletion-cost patch failed; retrying", "fleet", fleet, "pod", name, "cost", v,
		"result", result, "retry_in", wait, "err", err)
}

// writeScaledown publishes the ranking for operators (wsgate metrics):
// pod address -> position, the first to go first.
func (h *Hook) writeScaledown(ctx context.Context, fleet string, cands []candidate) {
	pods := make([]string, len(cands))
	for i, c := range cands {
		pods[i] = c.addr
	}
	if err := h.store.SetScaleDown(ctx, fleet, pods); err != nil {
		h.log.Warn("scale-down candidates not written", "fleet", fleet, "err", err)
	}
}

// undrain ends fleet's scale-down preparation and removes the costs it
// set, so that a scale-down the hook does not prepare (a rollout, KEDA's
// own) is not steered by stale ones. It never holds anything: a failed
// write is logged and retried (the Registry's own loop for the flags, the
// next Gate for the costs).
func (h *Hook) undrain(ctx context.Context, fleet string) {
	h.metrics.Holding.WithLabelValues(fleet).Set(0)
	h.removeCosts(ctx, fleet)
	if _, ok := h.drains[fleet]; !ok {
		// Flags another replica (or this one before a restart) left in
		// Redis go too; the Registry's loop writes it.
		h.reg.SetDraining(fleet, nil)
		return
	}
	delete(h.drains, fleet)
	h.metrics.Draining.WithLabelValues(fleet).Set(0)
	h.reg.SetDraining(fleet, nil)
	if err := h.reg.Publish(ctx, fleet); err != nil {
		h.log.Warn("undrain not written yet; the registry retries", "fleet", fleet, "err", err)
	}
	if err := h.store.ClearScaleDown(ctx, fleet); err != nil {
		h.log.Warn("scale-down candidates not removed", "fleet", fleet, "err", err)
	}
}

// removeCosts removes the cost annotation from fleet's pods that show one,
// also those an earlier run of the scaler patched.
func (h *Hook) removeCosts(ctx context.Context, fleet string) {
	now := h.clock.Now()
	for _, p := range h.reg.Pods(fleet) {
		if p.Name == "" {
			continue
		}
		pod, err := h.lister.Pods(h.namespace).Get(p.Name)
		if err != nil {
			continue
		}
		if _, set := pod.Annotations[CostAnnotation]; set {
			h.patch(ctx, fleet, p.Name, "", now)
		}
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	in := make(map[string]bool, len(a))
	for _, s := range a {
		in[s] = true
	}
	for _, s := range b {
		if !in[s] {
			return false
		}
	}
	return true
}
