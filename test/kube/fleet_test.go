package kube_test

import (
	"context"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/scaler/podcost"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// fleetCfg is a fleet as the fleets file describes it: its backend is the
// Service of the same name, port ws.
func fleetCfg(name string, capPerPod int) fleets.Fleet {
	return fleets.Fleet{Name: name, MaxConnectionsPerPod: capPerPod, RatePerSecond: 1000, Burst: 1000,
		Service: name, Port: "ws"}
}

// backend creates the Service and the Deployment (replicas pods, label
// app=name) of a fleet's backend; the kubelet helper runs its pods.
func backend(ctx context.Context, t *testing.T, a kubernetes.Interface, name string, replicas int32) {
	t.Helper()
	labels := service(ctx, t, a, name)
	_, err := a.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(replicas), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "backend", Image: "wsbackend",
					Ports: []corev1.ContainerPort{{Name: "ws", ContainerPort: 8080}}}}}}}}, metav1.CreateOptions{})
	noErr(t, err)
}

// service creates the Service name of a fleet's backend (port ws, 8080)
// and returns its selector, app=name.
func service(ctx context.Context, t *testing.T, a kubernetes.Interface, name string) map[string]string {
	t.Helper()
	labels := map[string]string{"app": name}
	_, err := a.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "ws", Port: 8080, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{})
	noErr(t, err)
	return labels
}

// scale sets the replicas of Deployment name on its scale subresource, as
// the HPA does.
func scale(ctx context.Context, t *testing.T, a kubernetes.Interface, name string, replicas int32) {
	t.Helper()
	_, err := a.AppsV1().Deployments(ns).UpdateScale(ctx, name, &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: autoscalingv1.ScaleSpec{Replicas: replicas}}, metav1.UpdateOptions{})
	noErr(t, err)
}

// awaitPods waits until the API server holds exactly n pods labelled
// app=name, all of them Ready (the ReplicaSet controller deletes a
// not-ready pod first, whatever its cost), and returns them sorted by name.
func awaitPods(ctx context.Context, t *testing.T, a kubernetes.Interface, name string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		l, err := a.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false, err
		}
		pods = l.Items
		for _, p := range pods {
			if !podReady(p) {
				return false, nil
			}
		}
		return len(pods) == n, nil
	})
	if err != nil {
		t.Fatalf("pods of %s never %d, all ready: %v (%d)", name, n, err, len(pods))
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods
}

// costs is the pod-deletion-cost of each pod of app=name as the API server
// has it (pods without one are absent).
func costs(ctx context.Context, t *testing.T, a kubernetes.Interface, name string) map[string]string {
	t.Helper()
	l, err := a.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	noErr(t, err)
	out := map[string]string{}
	for _, p := range l.Items {
		if v, ok := p.Annotations[podcost.CostAnnotation]; ok {
			out[p.Name] = v
		}
	}
	return out
}

// scalerSide is the scaler as the chart runs it with --kube, on a
// ServiceAccount's token: discovery feeding the Registry, the
// deletion-cost hook as the scale-down gate, and the KEDA external scaler
// served over gRPC with KEDA's client on the other end.
type scalerSide struct {
	store   *store.Store
	reg     *discovery.Registry
	disc    *discovery.Discovery
	hook    *podcost.Hook
	metrics *podcost.Metrics // the hook's
	keda    externalscaler.ExternalScalerClient
}

// newStore is a tracker Store on a real redis-server of its own.
func newStore(t *testing.T) *store.Store {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	return store.NewStore(rdb, "wsgate")
}

// startScaler starts the scaler's side for fleets with client (the
// scaler's token); hook options come after the test's defaults (a 1 s
// minimum patch interval).
func startScaler(ctx context.Context, t *testing.T, client kubernetes.Interface, store *store.Store, fleets []fleets.Fleet, opts ...podcost.Option) *scalerSide {
	t.Helper()
	log := testLogger(t)
	s := &scalerSide{store: store, metrics: podcost.NewMetrics(nil)}
	s.reg = discovery.NewRegistry(store, discovery.WithLogger(log))
	var err error
	s.disc, err = discovery.New(client, ns, fleets, s.reg, 0, discovery.WithDiscoveryLogger(log))
	noErr(t, err)
	go s.disc.Run(ctx)
	go s.reg.Run(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	s.hook = podcost.New(client, factory.Core().V1().Pods(), ns, store, s.reg,
		append([]podcost.Option{podcost.WithLogger(log), podcost.WithMetrics(s.metrics), podcost.WithMinPatchInterval(time.Second)}, opts...)...)
	factory.Start(ctx.Done())
	t.Cleanup(factory.Shutdown)

	srv, err := scaler.New(scaler.Config{Fleets: fleets, Settle: time.Millisecond}, store, scaler.WithGate(s.hook), scaler.WithLogger(log))
	noErr(t, err)
	g := scaler.NewGRPC(srv, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	noErr(t, err)
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Stop(sctx)
	})
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	noErr(t, err)
	t.Cleanup(func() { cc.Close() })
	s.keda = externalscaler.NewExternalScalerClient(cc)
	return s
}

// ref is the ScaledObjectRef KEDA sends for fleet's desiredReplicas
// trigger (createScaledObject's).
func ref(fleet string) *externalscaler.ScaledObjectRef {
	return &externalscaler.ScaledObjectRef{Name: fleet, Namespace: ns,
		ScalerMetadata: map[string]string{"fleet": fleet, "metric": "desiredReplicas"}}
}

// desired is what the scaler reports to KEDA for fleet (GetMetrics): the
// replicas the HPA is asked for, the scale-down gate applied.
func (s *scalerSide) desired(ctx context.Context, t *testing.T, fleet string) int {
	t.Helper()
	r, err := s.keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref(fleet)})
	noErr(t, err)
	return int(r.MetricValues[0].MetricValueFloat)
}

// awaitSettled waits until the scaler answers GetMetrics for fleet: after
// the first heartbeat of a new epoch it holds the metric for the settle
// time (by Redis' clock, whose milliseconds the test cannot watch).
func (s *scalerSide) awaitSettled(ctx context.Context, t *testing.T, fleet string) {
	t.Helper()
	var last error
	if err := wait.PollUntilContextTimeout(ctx, time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		_, last = s.keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref(fleet)})
		return last == nil, nil
	}); err != nil {
		t.Fatalf("the scaler kept holding %s's metric: %v", fleet, last)
	}
}

// active is the scaler's IsActive for fleet: whether KEDA keeps the fleet
// above zero replicas (or wakes it up).
func (s *scalerSide) active(ctx context.Context, t *testing.T, fleet string) bool {
	t.Helper()
	r, err := s.keda.IsActive(ctx, ref(fleet))
	noErr(t, err)
	return r.Result
}

// snapshot is fleet's state in Redis.
func (s *scalerSide) snapshot(ctx context.Context, t *testing.T, fleet string) store.Snapshot {
	t.Helper()
	snap, err := s.store.Snapshot(ctx, fleet, time.Now())
	noErr(t, err)
	return snap
}

// draining is the set of fleet's pods (by name) that Redis has draining:
// what admission sees.
func (s *scalerSide) draining(ctx context.Context, t *testing.T, fleet string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, p := range s.snapshot(ctx, t, fleet).Pods {
		if p.Draining {
			out[p.Name] = true
		}
	}
	return out
}

// awaitReady waits until Redis holds n ready, named pods of fleet, as
// discovery wrote them, and returns them sorted by name.
func (s *scalerSide) awaitReady(ctx context.Context, t *testing.T, fleet string, n int) []fleets.Pod {
	t.Helper()
	var ready []fleets.Pod
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		ready = s.ready(ctx, t, fleet)
		return len(ready) == n, nil
	})
	if err != nil {
		t.Fatalf("Redis never held %d ready pods of %s: %v (%d)", n, fleet, err, len(ready))
	}
	return ready
}

// ready is fleet's ready, named pods in Redis, sorted by name.
func (s *scalerSide) ready(ctx context.Context, t *testing.T, fleet string) []fleets.Pod {
	t.Helper()
	var ready []fleets.Pod
	for _, p := range s.snapshot(ctx, t, fleet).Pods {
		if p.Ready && p.Name != "" {
			ready = append(ready, p)
		}
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].Name < ready[j].Name })
	return ready
}

// setLoad reports live connections per pod (by address) for fleet as one
// Envoy instance's heartbeat does; seq must grow with every call.
func setLoad(ctx context.Context, t *testing.T, st *store.Store, fleet string, seq uint64, live map[string]int) {
	t.Helper()
	var counts []store.PodCount
	for addr, n := range live {
		counts = append(counts, store.PodCount{Pod: addr, Live: n})
	}
	_, err := st.Sync(ctx, store.SyncRequest{Fleet: fleet, Instance: "envoy-load", Lease: time.Hour,
		RecoveryWait: time.Millisecond, Seq: seq, Counts: counts})
	noErr(t, err)
}

// startTracker is a real tracker instance (one Envoy pod's sidecar) for
// fleets, heartbeating until the test ends, once its epoch grants.
func startTracker(ctx context.Context, t *testing.T, store *store.Store, fleets []fleets.Fleet, id string) *tracker.Tracker {
	t.Helper()
	tr, err := tracker.New(tracker.Config{InstanceID: id, Fleets: fleets, Heartbeat: 200 * time.Millisecond,
		InstanceTTL: time.Second, RedisTimeout: time.Second}, store, tracker.WithLogger(testLogger(t).With("instance", id)))
	noErr(t, err)
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	noErr(t, tr.AwaitGranting(actx))
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); tr.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })
	return tr
}

// fleetSetup is one fleet (const fleet) on a control plane of its own: the
// kubelet helper, the backend Service and Deployment, optionally KEDA's
// CRDs and the fleet's ScaledObject, and the scaler's side on a
// ServiceAccount bound to rules.
type fleetSetup struct {
	rules    []rbacv1.PolicyRule // nil: the chart's Role
	replicas int32
	cap      int
	// scaledObject creates KEDA's CRDs and the fleet's ScaledObject with
	// minReplicaCount min and behavior (nil: the HPA's defaults).
	scaledObject bool
	min          int32
	behavior     *autoscalingv2.HorizontalPodAutoscalerBehavior
	hook         []podcost.Option
}

// fleetEnv is a started fleetSetup.
type fleetEnv struct {
	*scalerSide
	cp     *controlPlane
	a      kubernetes.Interface // the admin
	fleets []fleets.Fleet
}

func (f fleetSetup) start(ctx context.Context, t *testing.T) *fleetEnv {
	t.Helper()
	cp := startControlPlane(t)
	e := &fleetEnv{cp: cp, a: cp.admin, fleets: []fleets.Fleet{fleetCfg(fleet, f.cap)}}
	rules := f.rules
	if rules == nil {
		rules = chartRole(t)
	}
	client := scalerAccount(ctx, t, e.a, cp, rules)
	kubelet(ctx, t, e.a)
	if f.scaledObject {
		createScaledObject(ctx, t, installKEDACRDs(ctx, t, cp), fleet, f.min, f.behavior)
	}
	backend(ctx, t, e.a, fleet, f.replicas)
	e.scalerSide = startScaler(ctx, t, client, newStore(t), e.fleets, f.hook...)
	return e
}
