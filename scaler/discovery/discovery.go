package discovery

import (
	"context"
	"fmt"
	"log/slog"
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

	"github.com/wsgate/wsgate/tracker"
)

// Discovery follows the EndpointSlices of the fleets' backend Services in
// one namespace and feeds the Registry; it also counts the ready endpoints
// of each fleet's Envoy Service. One namespaced informer watches the slices
// of all those Services (label kubernetes.io/service-name in (...)).
type Discovery struct {
	reg       *Registry
	log       *slog.Logger
	fleets    []tracker.FleetConfig
	factory   informers.SharedInformerFactory
	informer  cache.SharedIndexInformer
	lister    discoverylisters.EndpointSliceLister
	namespace string
	synced    atomic.Bool

	mu       sync.Mutex
	expected map[string]int // fleet -> ready Envoy endpoints
}

// Option configures a Discovery.
type Option func(*Discovery)

// WithDiscoveryLogger sets the logger (default slog.Default()).
func WithDiscoveryLogger(l *slog.Logger) Option { return func(d *Discovery) { d.log = l } }

// New returns a Discovery of the fleets that name a Service (the others
// keep their static pods) in namespace, feeding reg. Resync is the
// informer's resync period (0: none; the Registry re-publishes anyway).
func New(client kubernetes.Interface, namespace string, fleets []tracker.FleetConfig, reg *Registry, resync time.Duration, opts ...Option) (*Discovery, error) {
	d := &Discovery{reg: reg, log: slog.Default(), namespace: namespace, expected: map[string]int{}}
	for _, o := range opts {
		o(d)
	}
	services := map[string]bool{}
	for _, f := range fleets {
		if f.Service == "" {
			continue
		}
		d.fleets = append(d.fleets, f)
		services[f.Service] = true
		if f.EnvoyService != "" {
			services[f.EnvoyService] = true
		}
	}
	if len(services) == 0 {
		return nil, fmt.Errorf("discovery: no fleet names a service")
	}
	names := make([]string, 0, len(services))
	for s := range services {
		names = append(names, s)
	}
	sort.Strings(names)
	req, err := labels.NewRequirement(discoveryv1.LabelServiceName, selection.In, names)
	if err != nil {
		return nil, fmt.Errorf("discovery: services %v: %w", names, err)
	}
	selector := labels.NewSelector().Add(*req).String()
	d.factory = informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	slices := d.factory.Discovery().V1().EndpointSlices()
	d.informer, d.lister = slices.Informer(), slices.Lister()
	if _, err := d.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    d.onEvent,
		UpdateFunc: func(_, obj any) { d.onEvent(obj) },
		DeleteFunc: d.onEvent,
	}); err != nil {
		return nil, fmt.Errorf("discovery: add event handler: %w", err)
	}
	return d, nil
}

// Run starts the informer, fills the Registry once its cache holds every
// slice, then follows changes until ctx ends.
func (d *Discovery) Run(ctx context.Context) error {
	d.factory.Start(ctx.Done())
	defer d.factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), d.informer.HasSynced) {
		return fmt.Errorf("discovery: endpointslices of namespace %s not synced: %w", d.namespace, ctx.Err())
	}
	// Events before the first full list would publish partial registries
	// and remove pods that are fine; from here on every event counts.
	d.synced.Store(true)
	d.refresh("")
	d.log.Info("pod discovery synced", "namespace", d.namespace, "fleets", len(d.fleets))
	<-ctx.Done()
	return nil
}

// Synced reports whether the Registry holds a full view of every fleet.
func (d *Discovery) Synced() bool { return d.synced.Load() }

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
	if !d.synced.Load() {
		return false, false
	}
	for _, f := range d.fleets {
		if f.Name != fleet || f.EnvoyService == "" {
			continue
		}
		for _, s := range d.slicesOf(f.EnvoyService) {
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

func (d *Discovery) onEvent(obj any) {
	if !d.synced.Load() {
		return
	}
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	d.refresh(s.Labels[discoveryv1.LabelServiceName])
}

// refresh recomputes the fleets that depend on service ("" for all) from
// the informer's cache: the whole state every time, so a lost or
// reordered event cannot leave a stale entry behind.
func (d *Discovery) refresh(service string) {
	for _, f := range d.fleets {
		if service == "" || f.Service == service {
			d.reg.SetEndpoints(f.Name, podsOf(d.slicesOf(f.Service), f.Port))
		}
		if f.EnvoyService != "" && (service == "" || f.EnvoyService == service) {
			n := readyEndpoints(d.slicesOf(f.EnvoyService))
			d.mu.Lock()
			d.expected[f.Name] = n
			d.mu.Unlock()
		}
	}
}

func (d *Discovery) slicesOf(service string) []*discoveryv1.EndpointSlice {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service})
	// The lister reads the informer's own cache: it cannot fail.
	out, _ := d.lister.EndpointSlices(d.namespace).List(sel)
	return out
}
