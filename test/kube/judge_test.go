package kube_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

const envoyService = "wsgate-envoy"

// TestKubeJudgesExpiredInstances (PROTOCOL.md, "Partitions (G)"): with
// --expired-instances kube the scaler reaps a tracker instance that stopped
// heartbeating only once the fleet's Envoy Service no longer lists its pod.
// envoy-a holds the backend pod's whole cap and goes silent with its pod
// NotReady (cut off): its slots stay counted, so envoy-b is refused. envoy-c
// goes silent with its pod deleted: it is reaped, which shows the reaper
// ran and judged. Once envoy-a's pod is deleted too it is reaped, and
// envoy-b admits again. Real kube-apiserver and EndpointSlice controller,
// real Redis, the scaler's discovery on the chart's Role.
func TestKubeJudgesExpiredInstances(t *testing.T) {
	cp := startControlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a := cp.admin
	must := func(_ any, err error) { t.Helper(); noErr(t, err) }
	scalerClient := scalerAccount(ctx, t, a, cp, chartRole(t))
	kubelet(ctx, t, a)

	// The backend: one pod, cap 2. The Envoy fleet: three bare pods.
	must(a.CoreV1().Pods(ns).Create(ctx, barePod(fleet+"-0", service(ctx, t, a, fleet)), metav1.CreateOptions{}))
	envoyLabels := map[string]string{"app": "envoy"}
	must(a.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: envoyService},
		Spec: corev1.ServiceSpec{Selector: envoyLabels, Ports: []corev1.ServicePort{{Name: "http", Port: 10000, TargetPort: intstr.FromInt32(10000)}}}}, metav1.CreateOptions{}))
	for _, id := range []string{"envoy-a", "envoy-b", "envoy-c"} {
		must(a.CoreV1().Pods(ns).Create(ctx, barePod(id, envoyLabels), metav1.CreateOptions{}))
	}

	// The scaler's side: discovery (and the Registry it feeds) on the SA
	// token, the reaper judged by it.
	const ttl = 2 * time.Second
	fleetCfg := func() []fleets.Fleet {
		return []fleets.Fleet{{Name: fleet, Service: fleet, Port: "ws", EnvoyService: envoyService,
			MaxConnectionsPerPod: 2, RatePerSecond: 1000, Burst: 1000}}
	}
	log := testLogger(t)
	st := store.NewStore(redistest.Start(t).Client(), "wsgate")
	reg := discovery.NewRegistry(st, discovery.WithLogger(log))
	disc, err := discovery.New(scalerClient, ns, fleetCfg(), reg, 0, discovery.WithDiscoveryLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	go disc.Run(ctx)
	go reg.Run(ctx)
	srv, err := scaler.New(scaler.Config{Fleets: fleetCfg(), ExpiredInstances: fleets.ExpiredKube, InstanceTTL: ttl},
		st, scaler.WithInstanceJudge(disc), scaler.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}

	awaitEvery := func(interval time.Duration, what string, cond func(context.Context) (bool, error)) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, interval, time.Minute, true, cond); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	snapshot := func() store.Snapshot {
		t.Helper()
		s, err := st.Snapshot(ctx, fleet, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	var pod string // the backend pod's ip:port
	awaitEvery(100*time.Millisecond, "the backend pod placeable in Redis and 3 ready Envoy endpoints", func(context.Context) (bool, error) {
		pods := reg.Pods(fleet)
		if len(pods) != 1 || !pods[0].Ready || disc.ExpectedInstances(fleet) != 3 {
			return false, nil
		}
		pod = pods[0].Addr
		s := snapshot()
		return s.Pods[pod].Ready, nil
	})

	// The trackers: kube mode, so none of them reaps.
	trackers := map[string]*tracker.Tracker{}
	for _, id := range []string{"envoy-a", "envoy-b", "envoy-c"} {
		tr, err := tracker.New(tracker.Config{InstanceID: id, Fleets: fleetCfg(), Heartbeat: ttl / 5, InstanceTTL: ttl,
			RedisTimeout: time.Second, ExpiredInstances: fleets.ExpiredKube}, st, tracker.WithLogger(log.With("instance", id)))
		if err != nil {
			t.Fatal(err)
		}
		actx, acancel := context.WithTimeout(ctx, time.Minute)
		err = tr.AwaitGranting(actx)
		acancel()
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		trackers[id] = tr
	}
	trA, trB, trC := trackers["envoy-a"], trackers["envoy-b"], trackers["envoy-c"]
	admit := func(tr *tracker.Tracker) tracker.Result {
		t.Helper()
		res, err := tr.Admit(ctx, fleet)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	for i := range 2 {
		if res := admit(trA); !res.Admitted || res.Pod != pod {
			t.Fatalf("envoy-a's admission %d: %+v, want admitted on %s", i+1, res, pod)
		}
	}
	refused := func(who string, res tracker.Result) {
		t.Helper()
		if res.Admitted || res.Reason != store.ReasonCapacity || res.Fallback {
			t.Fatalf("%s's admission: %+v, want refused by Redis for capacity (envoy-a's 2 slots counted)", who, res)
		}
	}
	refused("envoy-b", admit(trB))
	// The last heartbeats of envoy-a and envoy-c, a's first: its lease ends
	// before c's, so when c is reaped a would be too if nobody judged.
	for _, tr := range []*tracker.Tracker{trA, trC} {
		if err := tr.Heartbeat(ctx); err != nil {
			t.Fatal(err)
		}
	}
	bctx, bcancel := context.WithCancel(ctx)
	bdone := make(chan struct{})
	go func() { defer close(bdone); trB.Run(bctx) }()
	defer func() { bcancel(); <-bdone }()

	// envoy-a's node stops reporting: its pod goes NotReady, still listed.
	setReady(ctx, t, a, "envoy-a", false)
	awaitEvery(100*time.Millisecond, "envoy-a listed not ready", func(ctx context.Context) (bool, error) {
		ep, err := endpointOf(ctx, a, envoyService, "envoy-a")
		return err == nil && ep != nil && ep.Conditions.Ready != nil && !*ep.Conditions.Ready && disc.ExpectedInstances(fleet) == 2, err
	})
	// envoy-c's pod is deleted.
	if err := a.CoreV1().Pods(ns).Delete(ctx, "envoy-c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitUnlisted := func(id string) {
		t.Helper()
		awaitEvery(100*time.Millisecond, id+" no longer listed", func(ctx context.Context) (bool, error) {
			ep, err := endpointOf(ctx, a, envoyService, id)
			alive, known := disc.InstanceAlive(fleet, id)
			return err == nil && ep == nil && known && !alive, err
		})
	}
	awaitUnlisted("envoy-c")
	if alive, known := disc.InstanceAlive(fleet, "envoy-a"); !alive || !known {
		t.Fatalf("InstanceAlive(envoy-a) = %v, %v; want listed (not ready)", alive, known)
	}

	// The reaper, every 200ms, until it reaps envoy-c.
	reapUntil := func(what string, done func() bool) time.Time {
		t.Helper()
		start := time.Now()
		awaitEvery(200*time.Millisecond, what, func(ctx context.Context) (bool, error) {
			if err := srv.Reap(ctx); err != nil {
				return false, err
			}
			return done(), nil
		})
		t.Logf("%s after %s of reaping", what, time.Since(start).Round(time.Millisecond))
		return time.Now()
	}
	instance := func(s store.Snapshot, id string) *store.InstanceState {
		for i := range s.Instances {
			if s.Instances[i].ID == id {
				return &s.Instances[i]
			}
		}
		return nil
	}
	stillCounted := func(when string) {
		t.Helper()
		s := snapshot()
		in := instance(s, "envoy-a")
		if in == nil || in.Live[pod] != 2 || s.Load[pod] != 2 || !s.RedisNow.After(in.LeaseUntil) {
			t.Fatalf("%s: envoy-a %+v, load on %s %d (Redis' clock %s): want its lease over and its 2 slots still counted",
				when, in, pod, s.Load[pod], s.RedisNow)
		}
		refused("envoy-b", admit(trB))
	}
	reaped := reapUntil("envoy-c reaped", func() bool { return instance(snapshot(), "envoy-c") == nil })
	stillCounted("when envoy-c was reaped")
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	rounds := 0
	for time.Since(reaped) < ttl+ttl/2 {
		<-tick.C
		if err := srv.Reap(ctx); err != nil {
			t.Fatal(err)
		}
		rounds++
		stillCounted("after reaping for " + time.Since(reaped).Round(time.Millisecond).String() + " more")
	}
	t.Logf("envoy-a kept its 2 slots through %d more reaps over %s", rounds, time.Since(reaped).Round(time.Millisecond))

	// Kubernetes deletes envoy-a's pod: now it is reaped and envoy-b admits.
	if err := a.CoreV1().Pods(ns).Delete(ctx, "envoy-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitUnlisted("envoy-a")
	reapUntil("envoy-a reaped", func() bool { return instance(snapshot(), "envoy-a") == nil })
	if s := snapshot(); s.Load[pod] != 0 || s.Live != 0 {
		t.Fatalf("after envoy-a was reaped: load on %s %d, live %d; want 0", pod, s.Load[pod], s.Live)
	}
	for i := range 2 {
		if res := admit(trB); !res.Admitted || res.Pod != pod {
			t.Fatalf("envoy-b's admission %d after envoy-a was reaped: %+v, want admitted on %s", i+1, res, pod)
		}
	}
	refused("envoy-b (the pod full again)", admit(trB))
}

// scalerAccount creates the namespace and the scaler's ServiceAccount bound
// to a Role of rules (the chart's: chartRole), and returns a clientset on
// its token.
func scalerAccount(ctx context.Context, t *testing.T, a kubernetes.Interface, cp *controlPlane, rules []rbacv1.PolicyRule) kubernetes.Interface {
	t.Helper()
	_, err := a.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	noErr(t, err)
	_, err = a.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "wsgate-scaler"}}, metav1.CreateOptions{})
	noErr(t, err)
	_, err = a.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "wsgate-scaler"}, Rules: rules}, metav1.CreateOptions{})
	noErr(t, err)
	_, err = a.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "wsgate-scaler"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "wsgate-scaler"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "wsgate-scaler", Namespace: ns}}}, metav1.CreateOptions{})
	noErr(t, err)
	tok, err := a.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "wsgate-scaler", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	noErr(t, err)
	return cp.client(t, tok.Status.Token)
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// barePod is a pod of no controller, for the kubelet helper to run.
func barePod(name string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: labels["app"]}}}}
}

// setReady sets a running pod's Ready condition. False is what the node
// lifecycle controller does to the pods of a node that stopped reporting:
// Ready=False, the pod still Running (so the kubelet helper leaves it
// alone) and its IP kept.
func setReady(ctx context.Context, t *testing.T, c kubernetes.Interface, name string, ready bool) {
	t.Helper()
	status, reason := corev1.ConditionTrue, ""
	if !ready {
		status, reason = corev1.ConditionFalse, "NodeStatusUnknown"
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status, LastTransitionTime: now, Reason: reason}}
		_, err = c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// endpointOf is pod's endpoint in the EndpointSlices of service as the API
// server has them (nil: not listed).
func endpointOf(ctx context.Context, c kubernetes.Interface, service, pod string) (*discoveryv1.Endpoint, error) {
	l, err := c.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service})
	if err != nil {
		return nil, err
	}
	for _, s := range l.Items {
		for _, ep := range s.Endpoints {
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" && ep.TargetRef.Name == pod {
				return &ep, nil
			}
		}
	}
	return nil, nil
}

// testLogger writes the components' logs to a file and prints them if t
// fails. A file, not t.Log: informers and heartbeats may log after the test
// returned.
func testLogger(t *testing.T) *slog.Logger {
	f, err := os.Create(filepath.Join(t.TempDir(), "wsgate.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(f.Name())
			t.Logf("wsgate logs:\n%s", b)
		}
	})
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
