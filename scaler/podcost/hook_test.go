package podcost_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/scaler/podcost"
	"github.com/wsgate/wsgate/store"
)

const (
	ns     = "apps"
	fleet  = "chat"
	settle = 10 * time.Second
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type env struct {
	client  *fake.Clientset
	store   *store.Store
	rdb     *redis.Client // the client store runs on
	reg     *discovery.Registry
	hook    *podcost.Hook
	clock   *clocktesting.FakeClock
	metrics *podcost.Metrics
	seen    chan string // pod names whose cost annotation the informer showed
	epoch   string      // the epoch envoy-1 synced in
}

func addr(i int) string { return fmt.Sprintf("10.0.0.%d:8080", i+1) }
func name(i int) string { return fmt.Sprintf("pod-%d", i) }

// newEnv starts a fleet of len(live) pods, pod-i created i minutes after
// t0, holding live[i] connections reported by a tracker's heartbeat.
func newEnv(t *testing.T, live []int, opts ...podcost.Option) *env {
	t.Helper()
	return newEnvShards(t, live, 1, opts...)
}

// newEnvShards is newEnv for a fleet of shards groups: each pod is
// registered, and its connections counted, in its own group.
func newEnvShards(t *testing.T, live []int, shards int, opts ...podcost.Option) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	e := &env{store: store.NewStore(rdb, "wsgate").WithoutRestartDetection(), rdb: rdb, clock: clocktesting.NewFakeClock(t0), seen: make(chan string, 1000)}

	var objs []runtime.Object
	var pods []fleets.Pod
	counts := map[string][]store.PodCount{} // by group
	fc := fleets.Fleet{Name: fleet, Shards: shards}
	for i, n := range live {
		objs = append(objs, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: name(i), Namespace: ns, CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(i) * time.Minute)),
		}})
		pods = append(pods, fleets.Pod{Addr: addr(i), Name: name(i), Ready: true})
		g := fleets.GroupName(fleet, fleets.GroupOf(addr(i), shards))
		counts[g] = append(counts[g], store.PodCount{Pod: addr(i), Live: n})
	}
	e.client = fake.NewClientset(objs...)
	e.reg = discovery.NewRegistry(e.store)
	e.reg.SetShards(fleet, shards)
	e.reg.SetEndpoints(fleet, pods)
	if err := e.reg.Publish(ctx, fleet); err != nil {
		t.Fatal(err)
	}
	// envoy-1's first heartbeat starts the epoch, which grants nothing for
	// its recovery wait (an instance TTL, of Redis' clock and of a
	// tracker's): Redis' clock is frozen, then moved past it. envoy-1's
	// lease outlasts the test.
	const recoveryWait = 10 * time.Second
	base := time.Now()
	mr.SetTime(base)
	epochs := map[string]string{}
	for _, g := range fc.GroupNames() {
		res, err := e.store.Sync(ctx, store.SyncRequest{Fleet: g, Instance: "envoy-1", Lease: time.Hour,
			RecoveryWait: recoveryWait, Seq: 1, Counts: counts[g]})
		if err != nil {
			t.Fatal(err)
		}
		epochs[g] = res.Epoch
	}
	e.epoch = epochs[fleet]
	// envoy-1 watched the wait pass on its own clock too, and confirms it.
	mr.SetTime(base.Add(recoveryWait))
	for _, g := range fc.GroupNames() {
		if _, err := e.store.Sync(ctx, store.SyncRequest{Fleet: g, Instance: "envoy-1", Lease: time.Hour,
			RecoveryWait: recoveryWait, Seq: 2, Confirm: epochs[g], Counts: counts[g]}); err != nil {
			t.Fatal(err)
		}
	}

	factory := informers.NewSharedInformerFactoryWithOptions(e.client, 0, informers.WithNamespace(ns))
	podInformer := factory.Core().V1().Pods()
	e.metrics = podcost.NewMetrics(prometheus.NewRegistry())
	e.hook = podcost.New(e.client, podInformer, ns, e.store, e.reg, append([]podcost.Option{
		podcost.WithClock(e.clock), podcost.WithSettle(settle), podcost.WithMetrics(e.metrics),
		podcost.WithMinPatchInterval(5 * time.Second), podcost.WithBackoff(time.Second, time.Minute)}, opts...)...)
	// Handlers run after the informer's cache is updated: what arrives
	// here is what the hook's lister shows.
	// A removed cost shows as "pod=".
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: func(old, obj any) {
		o, p := old.(*corev1.Pod), obj.(*corev1.Pod)
		if v, ok := p.Annotations[podcost.CostAnnotation]; ok || o.Annotations[podcost.CostAnnotation] != "" {
			e.seen <- p.Name + "=" + v
		}
	}}); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	t.Cleanup(func() { cancel(); factory.Shutdown() })
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced) {
		t.Fatal("pod informer did not sync")
	}
	return e
}

func (e *env) gate(t *testing.T, ready, recommended int) int {
	t.Helper()
	return e.hook.Gate(context.Background(), fleet, ready, recommended)
}

// patches lists the cost values patched onto each pod, in order.
func (e *env) patches() map[string][]string {
	out := map[string][]string{}
	for _, a := range e.client.Actions() {
		p, ok := a.(k8stesting.PatchAction)
		if !ok || a.GetVerb() != "patch" || a.GetResource().Resource != "pods" {
			continue
		}
		out[p.GetName()] = append(out[p.GetName()], costOf(p))
	}
	return out
}

func costOf(p k8stesting.PatchAction) string {
	var body struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(p.GetPatch(), &body); err != nil {
		return "malformed patch: " + err.Error()
	}
	return body.Metadata.Annotations[podcost.CostAnnotation]
}

func total(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// awaitSeen waits until the informer has shown want (pod=cost entries).
func (e *env) awaitSeen(t *testing.T, want map[string]bool) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for len(want) > 0 {
		select {
		case s := <-e.seen:
			delete(want, s)
		case <-timeout:
			t.Fatalf("informer never showed %v", want)
		}
	}
}

func (e *env) draining(t *testing.T) []string {
	t.Helper()
	snap, err := e.store.FleetSnapshot(context.Background(), fleets.Fleet{Name: fleet, Shards: e.reg.Shards(fleet)}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for a, p := range snap.Pods {
		if p.Draining {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

func counter(t *testing.T, m *podcost.Metrics, result string) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Patches.WithLabelValues(fleet, result).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// hidePatches makes the API server accept patches that the watch never
// shows, until the test reveals them: the state right after a patch, before
// the informer caught up.
type hidePatches struct {
	mu     sync.Mutex
	hidden []k8stesting.PatchAction
}

func (h *hidePatches) react(a k8stesting.Action) (bool, runtime.Object, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hidden = append(h.hidden, a.(k8stesting.PatchAction))
	return true, &corev1.Pod{}, nil
}

func (h *hidePatches) reveal(t *testing.T, c *fake.Clientset) {
	t.Helper()
	h.mu.Lock()
	hidden := h.hidden
	h.hidden = nil
	h.mu.Unlock()
	gvr := schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	for _, p := range hidden {
		obj, err := c.Tracker().Get(gvr, ns, p.GetName())
		if err != nil {
			t.Fatal(err)
		}
		pod := obj.(*corev1.Pod).DeepCopy()
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[podcost.CostAnnotation] = costOf(p)
		if err := c.Tracker().Update(gvr, pod, ns); err != nil {
			t.Fatal(err)
		}
	}
}

func TestScaleDownDrainsTheEmptiestAndWaitsForTheInformer(t *testing.T) {
	live := []int{5, 0, 3, 1, 7, 2, 0, 4, 6, 1}
	e := newEnv(t, live)
	hide := &hidePatches{}
	e.client.PrependReactor("patch", "pods", hide.react)

	if got := e.gate(t, 10, 6); got != 10 {
		t.Fatalf("first Gate = %d, want 10 held", got)
	}
	// Emptiest first; among equals the youngest (pod-6 before pod-1).
	wantDrained := []string{addr(1), addr(3), addr(6), addr(9)}
	sort.Strings(wantDrained)
	if got := e.draining(t); fmt.Sprint(got) != fmt.Sprint(wantDrained) {
		t.Fatalf("draining in Redis = %v, want %v", got, wantDrained)
	}
	if n := total(e.patches()); n != 10 {
		t.Fatalf("patches after the first Gate = %d, want one per pod (10)", n)
	}

	// Accepted but not yet observed: no amount of time lets it through,
	// and nothing is patched again.
	e.clock.Step(time.Hour)
	if got := e.gate(t, 10, 6); got != 10 {
		t.Fatalf("Gate before the informer saw the costs = %d, want 10", got)
	}
	if n := total(e.patches()); n != 10 {
		t.Fatalf("patches after a second Gate = %d, want still 10", n)
	}

	want := map[string]bool{}
	for pod, vals := range e.patches() {
		want[pod+"="+vals[0]] = true
	}
	hide.reveal(t, e.client)
	e.awaitSeen(t, want)
	if got := e.gate(t, 10, 6); got != 10 {
		t.Fatalf("Gate when the costs were just observed = %d, want 10 until the settle delay", got)
	}
	e.clock.Step(settle - time.Second)
	if got := e.gate(t, 10, 6); got != 10 {
		t.Fatalf("Gate 1s before the settle delay = %d, want 10", got)
	}
	e.clock.Step(time.Second)
	if got := e.gate(t, 10, 6); got != 6 {
		t.Fatalf("Gate after observation and settle = %d, want 6", got)
	}

	// The drained pods carry the 4 lowest costs.
	pods, err := e.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type pc struct {
		name string
		cost int
	}
	var costs []pc
	for _, p := range pods.Items {
		c, err := strconv.Atoi(p.Annotations[podcost.CostAnnotation])
		if err != nil {
			t.Fatalf("pod %s cost %q: %v", p.Name, p.Annotations[podcost.CostAnnotation], err)
		}
		costs = append(costs, pc{p.Name, c})
	}
	sort.Slice(costs, func(i, j int) bool { return costs[i].cost < costs[j].cost })
	lowest := map[string]bool{}
	for _, c := range costs[:4] {
		lowest[c.name] = true
	}
	if costs[3].cost >= costs[4].cost || !lowest["pod-1"] || !lowest["pod-3"] || !lowest["pod-6"] || !lowest["pod-9"] {
		t.Errorf("costs %v: want pod-1, pod-3, pod-6, pod-9 strictly lowest", costs)
	}
	// Fewer connections never cost more (equal bands may tie).
	for _, a := range costs {
		for _, b := range costs {
			if la, lb := live[podIndex(a.name)], live[podIndex(b.name)]; la < lb && a.cost > b.cost {
				t.Errorf("%s (%d conns) costs %d, more than %s (%d conns) at %d", a.name, la, a.cost, b.name, lb, b.cost)
			}
		}
	}

	// Admissions during the drain go to the other pods only.
	ctx := context.Background()
	drained := map[string]bool{}
	for _, a := range wantDrained {
		drained[a] = true
	}
	now := time.Now()
	for i := 0; i < 12; i++ {
		a, err := e.store.AdmitOne(ctx, store.AdmitRequest{Fleet: fleet, MaxPerPod: 100, Policy: fleets.PolicySpread, Instance: "envoy-1", Epoch: e.epoch, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if a.Pod == "" || drained[a.Pod] {
			t.Fatalf("admission %d went to %q (%s), want a non-draining pod", i, a.Pod, a.Reason)
		}
	}

	// Counts moved: only pods whose band changed are patched again, never
	// twice with the same value; the released scale-down stays released.
	e.clock.Step(time.Minute)
	if got := e.gate(t, 10, 6); got != 6 {
		t.Fatalf("Gate after admissions = %d, want 6", got)
	}
	hide.reveal(t, e.client)
	for pod, vals := range e.patches() {
		for i := 1; i < len(vals); i++ {
			if vals[i] == vals[i-1] {
				t.Errorf("pod %s patched twice in a row with %s: %v", pod, vals[i], vals)
			}
		}
	}

	scaledown, err := e.rdb.ZRange(ctx, e.store.Keys(fleet).ScaleDown(), 0, 3).Result()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(scaledown) != fmt.Sprint([]string{addr(6), addr(1), addr(9), addr(3)}) {
		t.Errorf("scaledown zset starts %v, want pod-6, pod-1, pod-9, pod-3", scaledown)
	}

	// Kubernetes removes one of the prepared pods: the scale-down goes on
	// without a new hold (which would reset the HPA's stabilization window).
	var left []fleets.Pod
	for _, p := range e.reg.Pods(fleet) {
		if p.Addr != wantDrained[0] {
			left = append(left, p)
		}
	}
	e.reg.SetEndpoints(fleet, left)
	if got := e.gate(t, 9, 6); got != 6 {
		t.Fatalf("Gate after the first prepared pod went = %d, want 6 at once", got)
	}
	// A prepared pod's address passes to a new, empty pod: that pod was not
	// prepared (no cost seen), so the scale-down holds again.
	for i := range left {
		if left[i].Addr == wantDrained[1] {
			left[i].Name = "pod-new"
		}
	}
	if _, err := e.client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: "pod-new", Namespace: ns, CreationTimestamp: metav1.NewTime(t0.Add(time.Hour))}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.reg.SetEndpoints(fleet, left)
	if got := e.gate(t, 9, 6); got != 9 {
		t.Fatalf("Gate after a prepared address passed to a new pod = %d, want 9 held", got)
	}

	// The recommendation rises: undrained at once.
	if got := e.gate(t, 10, 12); got != 12 {
		t.Fatalf("Gate on scale-up = %d, want 12 at once", got)
	}
	if got := e.draining(t); len(got) != 0 {
		t.Errorf("draining after scale-up = %v, want none", got)
	}
	if n, _ := e.rdb.Exists(ctx, e.store.Keys(fleet).ScaleDown()).Result(); n != 0 {
		t.Errorf("scaledown zset still present after scale-up")
	}
}

func podIndex(name string) int {
	var i int
	fmt.Sscanf(name, "pod-%d", &i)
	return i
}

func TestFailedPatchesAreRetriedWithBackoffAndNeverBlockScaleUp(t *testing.T) {
	e := newEnv(t, []int{4, 0, 2})
	var mu sync.Mutex
	attempts := 0
	e.client.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.PatchAction).GetName() != "pod-1" {
			return false, nil, nil
		}
		mu.Lock()
		defer mu.Unlock()
		attempts++
		gr := schema.GroupResource{Resource: "pods"}
		switch attempts {
		case 1:
			return true, nil, apierrors.NewForbidden(gr, "pod-1", fmt.Errorf("RBAC: patch not allowed"))
		case 2:
			return true, nil, apierrors.NewConflict(gr, "pod-1", fmt.Errorf("the object has been modified"))
		}
		return false, nil, nil
	})
	attemptsOf := func() int { mu.Lock(); defer mu.Unlock(); return attempts }

	if got := e.gate(t, 3, 2); got != 3 {
		t.Fatalf("Gate with a forbidden patch = %d, want 3 held", got)
	}
	if got := e.draining(t); fmt.Sprint(got) != fmt.Sprint([]string{addr(1)}) {
		t.Fatalf("draining = %v, want pod-1 drained even before its cost is set", got)
	}
	if n := counter(t, e.metrics, "forbidden"); n != 1 {
		t.Errorf("forbidden patches counted = %v, want 1", n)
	}
	// Still backing off: no new attempt.
	e.gate(t, 3, 2)
	if n := attemptsOf(); n != 1 {
		t.Errorf("attempts within the backoff = %d, want 1", n)
	}

	// Scale-up while the patch fails: reported at once, pod undrained.
	if got := e.gate(t, 3, 4); got != 4 {
		t.Fatalf("Gate on scale-up during failures = %d, want 4", got)
	}
	if got := e.draining(t); len(got) != 0 {
		t.Fatalf("draining after scale-up = %v, want none", got)
	}

	e.clock.Step(time.Second)
	if got := e.gate(t, 3, 2); got != 3 {
		t.Fatalf("Gate after a conflict = %d, want 3", got)
	}
	if n := counter(t, e.metrics, "conflict"); n != 1 || attemptsOf() != 2 {
		t.Errorf("conflicts counted = %v after %d attempts, want 1 after 2", n, attemptsOf())
	}
	e.clock.Step(time.Second) // the second failure doubled the wait
	e.gate(t, 3, 2)
	if n := attemptsOf(); n != 2 {
		t.Errorf("attempts 1s into a 2s backoff = %d, want 2", n)
	}
	e.clock.Step(time.Second)
	e.gate(t, 3, 2)
	if n := attemptsOf(); n != 3 {
		t.Fatalf("attempts after the backoff = %d, want 3", n)
	}
	if n := counter(t, e.metrics, "ok"); n != 3 {
		t.Errorf("successful patches = %v, want 3 (every pod once)", n)
	}
	e.awaitSeen(t, map[string]bool{"pod-1=-10000": true})
	e.gate(t, 3, 2) // observed: the settle delay starts
	e.clock.Step(settle)
	if got := e.gate(t, 3, 2); got != 2 {
		t.Fatalf("Gate once pod-1's cost is observed and settled = %d, want 2", got)
	}
}

// fixedScaling is a fleet's ScaledObject as the hook would read it.
type fixedScaling podcost.Autoscaling

func (f fixedScaling) Autoscaling(context.Context, string) (podcost.Autoscaling, error) {
	return podcost.Autoscaling(f), nil
}

// release drives a held scale-down through observation and the settle delay.
func (e *env) release(t *testing.T, ready, recommended int, want map[string]bool) int {
	t.Helper()
	e.awaitSeen(t, want)
	e.gate(t, ready, recommended) // observed: the settle delay starts
	e.clock.Step(settle)
	return e.gate(t, ready, recommended)
}

func TestNeverDrainsBelowTheMinimumReplicas(t *testing.T) {
	ctx := context.Background()
	t.Run("idle fleet above its minimum drains only the surplus", func(t *testing.T) {
		drainsOnlyTheSurplus(t, 5, 3, 3)
	})
	t.Run("idle fleet at its minimum drains nothing", func(t *testing.T) {
		e := newEnv(t, []int{0, 0, 0}, podcost.WithAutoscaling(fixedScaling{Known: true, MinReplicas: 3}))
		for range 3 {
			if got := e.gate(t, 3, 0); got != 0 {
				t.Fatalf("Gate = %d, want 0 reported (KEDA will not go below 3)", got)
			}
			e.clock.Step(settle)
		}
		if got := e.draining(t); len(got) != 0 {
			t.Errorf("draining = %v, want none", got)
		}
		if n := total(e.patches()); n != 0 {
			t.Errorf("patches = %v, want none", e.patches())
		}
		a, err := e.store.AdmitOne(ctx, store.AdmitRequest{Fleet: fleet, MaxPerPod: 100, Policy: fleets.PolicySpread, Instance: "envoy-1", Epoch: e.epoch, Now: time.Now()})
		if err != nil || a.Pod == "" {
			t.Fatalf("admission = %+v, %v; want a pod, not %s", a, err, store.ReasonNoPods)
		}
	})
	t.Run("no source: KEDA's default minimum, one pod", func(t *testing.T) {
		e := newEnv(t, []int{0, 0, 0})
		e.gate(t, 3, 0)
		if got, want := e.draining(t), []string{addr(1), addr(2)}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("draining = %v, want %v", got, want)
		}
	})
	// KEDA's HPA keeps max(minReplicaCount, 1) pods; the last one goes on
	// deactivation, once the fleet has been idle for the cooldown. A client
	// coming meanwhile must find it placeable.
	t.Run("scale to zero keeps the HPA's last pod placeable", func(t *testing.T) {
		drainsOnlyTheSurplus(t, 3, 0, 1)
	})
}

// failingScaling is a ScaledObject the hook cannot read.
type failingScaling struct{ err error }

func (f failingScaling) Autoscaling(context.Context, string) (podcost.Autoscaling, error) {
	return podcost.Autoscaling{}, f.err
}

// switchScaling is readable until broken is set.
type switchScaling struct {
	mu     sync.Mutex
	as     podcost.Autoscaling
	broken error
}

func (s *switchScaling) Autoscaling(context.Context, string) (podcost.Autoscaling, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return podcost.Autoscaling{}, s.broken
	}
	return s.as, nil
}

func (s *switchScaling) breakWith(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.broken = err
}

// TestUnknownMinimumDrainsNothingItReports: the case found on a real
// control plane. An idle fleet of ten whose ScaledObject the hook cannot
// read (RBAC refuses it, its CRD is missing, or no ScaledObject names the
// fleet): whatever the policy recommends, the HPA keeps an unknown number
// of pods, so the hook holds the scale-down at the ready pods and drains
// none of them, however long it is asked; no drain cost is patched.
func TestUnknownMinimumDrainsNothingItReports(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "keda.sh", Resource: "scaledobjects"}, "", fmt.Errorf("RBAC"))
	for name, src := range map[string]podcost.AutoscalingSource{
		"forbidden":       failingScaling{forbidden},
		"CRD missing":     failingScaling{apierrors.NewNotFound(schema.GroupResource{Group: "keda.sh", Resource: "scaledobjects"}, "")},
		"no ScaledObject": fixedScaling{},
	} {
		t.Run(name, func(t *testing.T) {
			const n = 10
			e := newEnv(t, make([]int, n), podcost.WithAutoscaling(src))
			for range 5 {
				reported := e.gate(t, n, 0)
				if got := e.draining(t); len(got) > n-reported {
					t.Fatalf("reported %d of %d ready and %d draining (%v): a drained pod is kept", reported, n, len(got), got)
				}
				if reported != n {
					t.Fatalf("Gate = %d, want %d held: the pods the HPA removes are unknown", reported, n)
				}
				e.clock.Step(settle)
			}
			for pod, vs := range e.patches() {
				for _, v := range vs {
					if c, _ := strconv.Atoi(v); c < 0 {
						t.Errorf("pod %s patched with drain cost %s", pod, v)
					}
				}
			}
			if v := gauge(t, e.metrics.Holding); v != 1 {
				t.Errorf("wsgate_scaler_podcost_holding = %v, want 1", v)
			}
		})
	}
	t.Run("becoming unreadable undrains", func(t *testing.T) {
		src := &switchScaling{as: podcost.Autoscaling{Known: true, MinReplicas: 1}}
		e := newEnv(t, []int{0, 0, 0}, podcost.WithAutoscaling(src))
		e.gate(t, 3, 0)
		if got := e.draining(t); len(got) != 2 {
			t.Fatalf("draining = %v, want two pods above the minimum", got)
		}
		src.breakWith(forbidden)
		if got := e.gate(t, 3, 0); got != 3 {
			t.Fatalf("Gate = %d once the ScaledObject is unreadable, want 3 held", got)
		}
		if got := e.draining(t); len(got) != 0 {
			t.Fatalf("draining = %v once the ScaledObject is unreadable, want none", got)
		}
	})
}

func gauge(t *testing.T, v *prometheus.GaugeVec) float64 {
	t.Helper()
	var d dto.Metric
	if err := v.WithLabelValues(fleet).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetGauge().GetValue()
}

// drainsOnlyTheSurplus: an idle fleet of n pods whose ScaledObject has
// minReplicaCount min, which the HPA keeps keep of. The youngest n - keep
// drain (equal loads: as the ReplicaSet controller prefers) and are
// released; once they went, nothing drains and admission has a pod.
func drainsOnlyTheSurplus(t *testing.T, n, min, keep int) {
	t.Helper()
	e := newEnv(t, make([]int, n), podcost.WithAutoscaling(fixedScaling{Known: true, MinReplicas: min}))
	if got := e.gate(t, n, 0); got != n {
		t.Fatalf("Gate = %d, want %d held", got, n)
	}
	var want []string
	seen := map[string]bool{}
	for i := keep; i < n; i++ {
		want = append(want, addr(i))
		seen[fmt.Sprintf("pod-%d=-10000", i)] = true
	}
	if got := e.draining(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("draining = %v, want %v: %d ready - max(0 recommended, the HPA's minimum %d)", got, want, n, keep)
	}
	if got := e.release(t, n, 0, seen); got != 0 {
		t.Fatalf("Gate once prepared = %d, want 0 (the HPA holds its minimum)", got)
	}
	var left []fleets.Pod
	for _, p := range e.reg.Pods(fleet) {
		if !slices.Contains(want, p.Addr) {
			left = append(left, p)
		}
	}
	e.reg.SetEndpoints(fleet, left)
	if got := e.gate(t, keep, 0); got != 0 {
		t.Fatalf("Gate at the minimum = %d, want 0", got)
	}
	if got := e.draining(t); len(got) != 0 {
		t.Fatalf("draining at the minimum = %v, want none", got)
	}
	a, err := e.store.AdmitOne(context.Background(), store.AdmitRequest{Fleet: fleet, MaxPerPod: 100, Policy: fleets.PolicySpread, Instance: "envoy-1", Epoch: e.epoch, Now: time.Now()})
	if err != nil || a.Pod == "" {
		t.Fatalf("admission at the minimum = %+v, %v; want a pod, not %s", a, err, store.ReasonNoPods)
	}
}

func TestUndrainRemovesTheCosts(t *testing.T) {
	e := newEnv(t, []int{4, 0, 2})
	e.gate(t, 3, 2)
	if got := e.release(t, 3, 2, map[string]bool{"pod-0=400": true, "pod-1=-10000": true, "pod-2=300": true}); got != 2 {
		t.Fatalf("Gate once prepared = %d, want 2", got)
	}
	// The load rises: undrained at once; the costs go once the pods may be
	// patched again, so that a scale-down the hook does not prepare is not
	// steered by them.
	if got := e.gate(t, 3, 3); got != 3 {
		t.Fatalf("Gate on a rising load = %d, want 3", got)
	}
	e.clock.Step(5 * time.Second)
	e.gate(t, 3, 3)
	e.awaitSeen(t, map[string]bool{"pod-0=": true, "pod-1=": true, "pod-2=": true})
	pods, err := e.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if v, ok := p.Annotations[podcost.CostAnnotation]; ok {
			t.Errorf("pod %s still has cost %q after undrain", p.Name, v)
		}
	}
	before := total(e.patches())
	e.clock.Step(time.Minute)
	e.gate(t, 3, 3)
	if n := total(e.patches()); n != before {
		t.Errorf("patches after the costs were gone: %d, want still %d", n, before)
	}
}

func TestSettleOverlapsTheStabilizationWindow(t *testing.T) {
	want := map[string]bool{"pod-0=400": true, "pod-1=-10000": true, "pod-2=300": true}
	t.Run("window longer than settle: released once observed", func(t *testing.T) {
		e := newEnv(t, []int{4, 0, 2}, podcost.WithAutoscaling(fixedScaling{Known: true, MinReplicas: 1, ScaleDownWindow: 5 * time.Minute}))
		hide := &hidePatches{}
		e.client.PrependReactor("patch", "pods", hide.react)
		if got := e.gate(t, 3, 2); got != 3 {
			t.Fatalf("Gate before the costs are observed = %d, want 3", got)
		}
		hide.reveal(t, e.client)
		e.awaitSeen(t, want)
		if got := e.gate(t, 3, 2); got != 2 {
			t.Fatalf("Gate once observed = %d, want 2: the HPA's 5m window covers the settle", got)
		}
	})
	t.Run("window shorter than settle: holds the difference", func(t *testing.T) {
		e := newEnv(t, []int{4, 0, 2}, podcost.WithAutoscaling(fixedScaling{Known: true, MinReplicas: 1, ScaleDownWindow: 4 * time.Second}))
		e.gate(t, 3, 2)
		e.awaitSeen(t, want)
		e.gate(t, 3, 2)
		e.clock.Step(settle - 4*time.Second - time.Millisecond)
		if got := e.gate(t, 3, 2); got != 3 {
			t.Fatalf("Gate before settle - window = %d, want 3", got)
		}
		e.clock.Step(time.Millisecond)
		if got := e.gate(t, 3, 2); got != 2 {
			t.Fatalf("Gate at settle - window = %d, want 2", got)
		}
	})
}
