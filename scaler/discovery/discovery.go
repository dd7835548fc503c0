package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wsgate/wsgate/fleets"
)

// Discovery follows the EndpointSlices of the fleets' backend Services in
// one namespace and feeds the Registry; it also counts the ready endpoints
// of each fleet's Envoy Service. One namespaced informer watches the slices
// of all those Services (label kubernetes.io/service-name in (...)); when
// SetFleets changes that set of Services, the informer is replaced.
type Discovery struct {
	reg       *Registry
	log       *slog.Logger
	client    kubernetes.Interface
	resync    time.Duration
	namespace string

	// w is the current watch; nil fields until Run starts one.
	w      atomic.Pointer[watch]
	reload chan struct{} // SetFleets changed the Services to watch

	mu       sync.Mutex
	expected map[string]int // fleet -> ready Envoy endpoints
}

// watch is one set of fleets and the informer of their Services' slices.
type watch struct {
	fleets   []fleets.Fleet // those that name a Service
	services []string       // sorted
	informer cache.SharedIndexInformer
	lister   discoverylisters.EndpointSliceLister
	synced   atomic.Bool
}

// Option configures a Discovery.
type Option func(*Discovery)

// WithDiscoveryLogger sets the logger (default slog.Default()).
func WithDiscoveryLogger(l *slog.Logger) Option { return func(d *Discovery) { d.log = l } }

// New returns a Discovery of the fleets that name a Service (the others
// keep their static pods) in namespace, feeding reg. Resync is the
// informer's resync period (0: none; the Registry re-publishes anyway).
func New(client kubernetes.Interface, namespace string, fleets []fleets.Fleet, reg *Registry, resync time.Duration, opts ...Option) (*Discovery, error) {
	d := &Discovery{reg: reg, log: slog.Default(), client: client, resync: resync, namespace: namespace,
		reload: make(chan struct{}, 1), expected: map[string]int{}}
	for _, o := range opts {
		o(d)
	}
	w, err := newWatch(fleets)
	if err != nil {
		return nil, err
	}
	d.w.Store(w)
	return d, nil
}

func newWatch(fleets []fleets.Fleet) (*watch, error) {
	w := &watch{}
	services := map[string]bool{}
	for _, f := range fleets {
		if f.Service == "" {
			continue
		}
		w.fleets = append(w.fleets, f)
		services[f.Service] = true
		if f.EnvoyService != "" {
			services[f.EnvoyService] = true
		}
	}
	if len(services) == 0 {
		return nil, fmt.Errorf("discovery: no fleet names a service")
	}
	for s := range services {
		w.services = append(w.services, s)
	}
	sort.Strings(w.services)
	return w, nil
}

// Check says whether SetFleets would accept fleets, changing nothing.
func Check(fleets []fleets.Fleet) error {
	_, err := newWatch(fleets)
	return err
}

// SetFleets follows fleets from now on (a changed fleets file): the
// registries are recomputed at once; if the Services to watch changed, the
// informer is replaced, and until the new one has listed them nobody is
// judged gone (InstanceAlive) and no registry changes.
func (d *Discovery) SetFleets(fleets []fleets.Fleet) error {
	w, err := newWatch(fleets)
	if err != nil {
		return err
	}
	old := d.w.Load()
	if slices.Equal(old.services, w.services) && old.informer != nil {
		w.informer, w.lister = old.informer, old.lister
		w.synced.Store(old.synced.Load())
		d.w.Store(w)
		d.refresh(w, "")
		return nil
	}
	d.w.Store(w)
	select {
	case d.reload <- struct{}{}:
	default:
	}
	return nil
}

// Run watches the fleets' Services until ctx ends: it fills the Registry
// once the informer's cache holds every slice, then follows changes, and
// starts over with a new informer when SetFleets changed the Services.
func (d *Discovery) Run(ctx context.Context) error {
	for {
		restart, err := d.runWatch(ctx)
		if err != nil || !restart {
			return err
		}
	}
}

func (d *Discovery) runWatch(parent context.Context) (restart bool, err error) {
	w := d.w.Load()
	req, err := labels.NewRequirement(discoveryv1.LabelServiceName, selection.In, w.services)
	if err != nil {
		return false, fmt.Errorf("discovery: services %v: %w", w.services, err)
	}
	ctx, cancel := context.WithCancel(parent)
	selector := labels.NewSelector().Add(*req).String()
	factory := informers.NewSharedInformerFactoryWithOptions(d.client, d.resync,
		informers.WithNamespace(d.namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	// Shutdown waits for the informer, which stops when ctx ends.
	defer func() { cancel(); factory.Shutdown() }()
	es := factory.Discovery().V1().EndpointSlices()
	// A watch's fields never change once it is stored: this one carries
	// the informer, unless SetFleets stored another meanwhile.
	nw := &watch{fleets: w.fleets, services: w.services, informer: es.Informer(), lister: es.Lister()}
	if !d.w.CompareAndSwap(w, nw) {
		return true, nil
	}
	// The watch the handlers see: the one current when the event comes,
	// as long as it still uses this informer.
	current := func() *watch {
		if w := d.w.Load(); w.informer == nw.informer {
			return w
		}
		return nil
	}
	if _, err := nw.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { d.onEvent(current(), obj) },
		UpdateFunc: func(_, obj any) { d.onEvent(current(), obj) },
		DeleteFunc: func(obj any) { d.onEvent(current(), obj) },
	}); err != nil {
		return false, fmt.Errorf("discovery: add event handler: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nw.informer.HasSynced) {
		return false, nil // ctx ended
	}
	// Events before the first full list would publish partial registries
	// and remove pods that are fine; from here on every event counts.
	if w = current(); w == nil {
		return true, nil // the Services changed while this one listed
	}
	w.synced.Store(true)
	d.refresh(w, "")
	d.log.Info("pod discovery synced", "namespace", d.namespace, "fleets", len(w.fleets), "services", w.services)
	select {
	case <-parent.Done():
		return false, nil
	case <-d.reload:
		return true, nil
	}
}

// Synced reports whether the Registry holds a full view of every fleet.
func (d *Discovery) Synced() bool { return d.w.Load().synced.Load() }

// ExpectedInstances is the number of ready endpoints of fleet's Envoy
// Service: how many tracker instances should be re-syncing their state.
// It is 0 when the fleet names no Envoy Service or before Synced.
func (d *Discovery) ExpectedInstances(fleet string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expected[fleet]
}

// InstanceAlive says whether Kubernetes still lists the tracker instance id
// (the name of its Envoy pod, as the chart's --instance-id) among the
// endpoints of fleet's Envoy Service, in any condition: ready or not,
// terminating or not. A pod cut off from the network stays listed until
// Kubernetes deletes it, so its connections stay counted. known is false
// when the fleet names no Envoy Service or before Synced: then nobody may
// be judged gone.
func (d *Discovery) InstanceAlive(fleet, id string) (alive, known bool) {
	w := d.w.Load()
	if !w.synced.Load() {
		return false, false
	}
	for _, f := range w.fleets {
		if f.Name != fleet || f.EnvoyService == "" {
			continue
		}
		for _, s := range d.slicesOf(w, f.EnvoyService) {
			for _, ep := range s.Endpoints {
				if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" && ep.TargetRef.Name == id {
					return true, true
				}
			}
		}
		return false, true
	}
	return false, false
}

func (d *Discovery) onEvent(w *watch, obj any) {
	if w == nil || !w.synced.Load() {
		return
	}
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	d.refresh(w, s.Labels[discoveryv1.LabelServiceName])
}

// refresh recomputes the fleets that depend on service ("" for all) from
// the informer's cache: the whole state every time, so a lost or
// reordered event cannot leave a stale entry behind.
func (d *Discovery) refresh(w *watch, service string) {
	if w.lister == nil || !w.synced.Load() {
		return
	}
	for _, f := range w.fleets {
		if service == "" || f.Service == service {
			d.reg.SetShards(f.Name, f.Shards)
			d.reg.SetEndpoints(f.Name, podsOf(d.slicesOf(w, f.Service), f.Port))
		}
		if f.EnvoyService != "" && (service == "" || f.EnvoyService == service) {
			n := readyEndpoints(d.slicesOf(w, f.EnvoyService))
			d.mu.Lock()
			d.expected[f.Name] = n
			d.mu.Unlock()
		}
	}
}

func (d *Discovery) slicesOf(w *watch, service string) []*discoveryv1.EndpointSlice {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service})
	// The lister reads the informer's own cache: it cannot fail.
	out, _ := w.lister.EndpointSlices(d.namespace).List(sel)
	return out
}
