package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/scaler/podcost"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/kedatest"
	"github.com/wsgate/wsgate/test/wsdial"
)

const (
	kubeNS       = "apps"
	chatService  = "chat-backend"
	costSettle   = 200 * time.Millisecond
	scaleDownCap = 10 // perPod = 10 × 0.8 = 8 connections
)

// kube is the Kubernetes side of a scale-down on client-go's fake
// clientset: one pod per backend, discovered from EndpointSlices, and the
// pod-deletion-cost hook as the scaler's gate, on a fake clock so the
// settle delay passes exactly when the test says.
type kube struct {
	t      *testing.T
	client *fake.Clientset
	clock  *clocktesting.FakeClock
	hidden *hiddenPatches
	seen   chan string       // "pod=cost" as the hook's pod informer shows it
	pod    map[string]string // backend address -> pod name
}

// gate starts discovery, the Registry and the hook for h's fleet. Backends
// share 127.0.0.1, so each pod gets its own EndpointSlice, whose port is
// the backend's.
func (k *kube) gate(h *harness) scaler.ScaleDownGate {
	t := k.t
	k.pod = map[string]string{}
	created := time.Now().Add(-time.Hour)
	var objs []runtime.Object
	for i, b := range h.backends {
		name := fmt.Sprintf("chat-%d", i)
		k.pod[b.Addr] = name
		_, port, err := net.SplitHostPort(b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(port)
		objs = append(objs,
			&corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kubeNS, CreationTimestamp: metav1.NewTime(created.Add(time.Duration(i) * time.Minute))},
				Status:     corev1.PodStatus{PodIP: "127.0.0.1"},
			},
			&discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Name: chatService + "-" + name, Namespace: kubeNS, Labels: map[string]string{discoveryv1.LabelServiceName: chatService}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       []discoveryv1.EndpointPort{{Name: ptr("ws"), Port: ptr(int32(p))}},
				Endpoints: []discoveryv1.Endpoint{{
					Addresses:  []string{"127.0.0.1"},
					Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
					TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: kubeNS, Name: name},
				}},
			})
	}
	k.client = fake.NewClientset(objs...)
	k.hidden = &hiddenPatches{}
	k.client.PrependReactor("patch", "pods", k.hidden.react)
	k.clock = clocktesting.NewFakeClock(time.Now())
	k.seen = make(chan string, 100)

	reg := discovery.NewRegistry(h.store, discovery.WithLogger(quiet))
	disc, err := discovery.New(k.client, kubeNS, []fleets.Fleet{h.fleet}, reg, 0, discovery.WithDiscoveryLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0, informers.WithNamespace(kubeNS))
	pods := factory.Core().V1().Pods()
	hook := podcost.New(k.client, pods, kubeNS, h.store, reg,
		podcost.WithLogger(quiet), podcost.WithClock(k.clock), podcost.WithSettle(costSettle))
	// Handlers run after the informer's cache changed: what arrives here
	// is what the hook's lister reads.
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, obj any) {
		if p := obj.(*corev1.Pod); p.Annotations[podcost.CostAnnotation] != "" {
			k.seen <- p.Name + "=" + p.Annotations[podcost.CostAnnotation]
		}
	}}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { reg.Run(ctx) })
	wg.Go(func() {
		if err := disc.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("discovery: %v", err)
		}
	})
	factory.Start(ctx.Done())
	t.Cleanup(func() { cancel(); factory.Shutdown(); wg.Wait() })
	if !cache.WaitForCacheSync(ctx.Done(), pods.Informer().HasSynced) {
		t.Fatal("pod informer did not sync")
	}
	return hook
}

func ptr[T any](v T) *T { return &v }

// hiddenPatches makes the fake API server accept cost patches that neither
// the clientset nor the watch show until the test reveals them: the time
// between a patch and the informer catching up, stretched at will.
type hiddenPatches struct {
	mu      sync.Mutex
	patches map[string]string // pod name -> last cost sent
	order   []string          // pod names, one per patch received
}

func (h *hiddenPatches) react(a k8stesting.Action) (bool, runtime.Object, error) {
	p := a.(k8stesting.PatchAction)
	var body struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(p.GetPatch(), &body); err != nil {
		return true, nil, fmt.Errorf("malformed cost patch of %s: %w", p.GetName(), err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.patches == nil {
		h.patches = map[string]string{}
	}
	h.patches[p.GetName()] = body.Metadata.Annotations[podcost.CostAnnotation]
	h.order = append(h.order, p.GetName())
	return true, &corev1.Pod{}, nil
}

// sent returns the costs patched so far and how many patches were sent.
func (h *hiddenPatches) sent() (map[string]string, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]string, len(h.patches))
	for k, v := range h.patches {
		out[k] = v
	}
	return out, len(h.order)
}

// reveal applies the cost sent to each named pod, as the API server would
// have, and waits until the hook's informer shows them.
func (k *kube) reveal(names ...string) {
	k.t.Helper()
	costs, _ := k.hidden.sent()
	gvr := schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	want := map[string]bool{}
	for _, name := range names {
		obj, err := k.client.Tracker().Get(gvr, kubeNS, name)
		if err != nil {
			k.t.Fatal(err)
		}
		pod := obj.(*corev1.Pod).DeepCopy()
		pod.Annotations = map[string]string{podcost.CostAnnotation: costs[name]}
		if err := k.client.Tracker().Update(gvr, pod, kubeNS); err != nil {
			k.t.Fatal(err)
		}
		want[name+"="+costs[name]] = true
	}
	timeout := time.After(60 * time.Second)
	for len(want) > 0 {
		select {
		case s := <-k.seen:
			delete(want, s)
		case <-timeout:
			k.t.Fatalf("pod informer never showed %v", want)
		}
	}
}

// TestScaleDownWaitsForDeletionCosts: real connections spread over three
// discovered pods drain until the policy wants one pod. The two emptiest
// pods are drained at once (no new connection reaches them, counted by the
// backends), get the two lowest pod-deletion-costs, and KEDA keeps reading
// 3 replicas until every draining pod's cost is in the API server and the
// hook's informer and the settle delay has passed; then 1.
func TestScaleDownWaitsForDeletionCosts(t *testing.T) {
	k := &kube{t: t}
	h := newHarness(t, harnessOptions{
		cap: scaleDownCap,
		fleet: func(f *fleets.Fleet) {
			f.Pods, f.Service, f.Port, f.Policy = nil, chatService, "ws", fleets.PolicySpread
		},
		gate: k.gate,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	desired := func() int {
		t.Helper()
		v, err := kedatest.Metric(ctx, h.keda, "chat", "desiredReplicas")
		if err != nil {
			t.Fatalf("desiredReplicas: %v", err)
		}
		return int(v)
	}
	snapshot := func() store.Snapshot {
		t.Helper()
		s, err := h.store.Snapshot(ctx, "chat", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	await.Until(t, "three discovered pods in the registry", 50*time.Second, func() (bool, string) {
		s := snapshot()
		ok := len(s.Pods) == 3
		for addr, name := range k.pod {
			p := s.Pods[addr]
			ok = ok && p.Name == name && p.Ready && !p.Draining
		}
		return ok, fmt.Sprint(s.Pods)
	})

	// dialOne opens one tunnel and names the backend that took it, by the
	// backends' own counters.
	byBackend := map[*backend][]*websocket.Conn{}
	dialOne := func(i int) *backend {
		t.Helper()
		before := make([]int64, len(h.backends))
		for j, b := range h.backends {
			before[j] = b.Seen.Load()
		}
		r := wsdial.Dial(ctx, h.nodes[i%2].url, nil)
		if r.Err != nil {
			t.Fatalf("dial %d: status %d reason %q: %v", i, r.Status, r.Reason, r.Err)
		}
		if err := wsdial.Ping(ctx, r.Conn); err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		var got *backend
		for j, b := range h.backends {
			if b.Seen.Load() != before[j] {
				if got != nil {
					t.Fatalf("dial %d reached two backends", i)
				}
				got = b
			}
		}
		if got == nil {
			t.Fatalf("dial %d reached no backend", i)
		}
		byBackend[got] = append(byBackend[got], r.Conn)
		return got
	}
	defer func() {
		for _, cs := range byBackend {
			for _, c := range cs {
				c.CloseNow()
			}
		}
	}()

	for i := range 18 {
		dialOne(i)
	}
	for _, b := range h.backends {
		if n := len(byBackend[b]); n != 6 {
			t.Fatalf("backend %s took %d of 18 connections, want 6 (policy spread)", b.Addr, n)
		}
	}
	await.Until(t, "18 live in Redis", 30*time.Second, func() (bool, string) {
		n := h.live(t)
		return n == 18, strconv.FormatInt(n, 10)
	})
	if got := desired(); got != 3 {
		t.Fatalf("desiredReplicas with 18 connections = %d, want ceil(18/8) = 3", got)
	}
	if _, n := k.hidden.sent(); n != 0 {
		t.Fatalf("%d cost patches while nothing is to be removed, want none", n)
	}

	// Drain to 5, 1 and 0 connections: the policy wants ceil(6/8) = 1 pod.
	full, few, empty := h.backends[0], h.backends[1], h.backends[2]
	closeN := func(b *backend, n int) {
		for _, c := range byBackend[b][:n] {
			c.Close(websocket.StatusNormalClosure, "")
		}
		byBackend[b] = byBackend[b][n:]
	}
	closeN(full, 1)
	closeN(few, 5)
	closeN(empty, 6)
	// No desiredReplicas is read meanwhile: the drain must be chosen on the
	// settled counts, the pods' and the summary's the scaler reads (the
	// trackers' heartbeats publish it).
	await.Until(t, "counts 5, 1, 0 in the backends and Redis", 30*time.Second, func() (bool, string) {
		s, live := snapshot(), h.live(t)
		ok := s.Live == 6 && live == 6
		for b, want := range map[*backend]int{full: 5, few: 1, empty: 0} {
			ok = ok && b.Live.Load() == int64(want) && s.Load[b.Addr] == want
		}
		return ok, fmt.Sprintf("redis %v live %d (summary %d)", s.Load, s.Live, live)
	})

	// The first reading starts the drain and holds the scale-down.
	if got := desired(); got != 3 {
		t.Fatalf("desiredReplicas when the drain starts = %d, want 3 held", got)
	}
	// One trigger, so one decision hash, named in the fleet's index.
	triggers, err := h.rdb.ZRange(ctx, h.store.Keys("chat").Scalers(), 0, -1).Result()
	if err != nil || len(triggers) != 1 {
		t.Fatalf("scaler triggers of chat = %v (%v), want the test's one", triggers, err)
	}
	sc, err := h.rdb.HGetAll(ctx, h.store.Keys("chat").Scaler(triggers[0])).Result()
	if err != nil {
		t.Fatal(err)
	}
	if sc["recommended"] != "1" || sc["reported"] != "3" {
		t.Fatalf("scaler hash %v: want recommended 1, reported 3", sc)
	}
	s := snapshot()
	for b, want := range map[*backend]bool{full: false, few: true, empty: true} {
		if s.Pods[b.Addr].Draining != want {
			t.Errorf("pod %s (%d conns) draining = %v, want %v", k.pod[b.Addr], b.Live.Load(), s.Pods[b.Addr].Draining, want)
		}
	}
	order, err := h.rdb.ZRange(ctx, h.store.Keys("chat").ScaleDown(), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(order) != fmt.Sprint([]string{empty.Addr, few.Addr, full.Addr}) {
		t.Errorf("scaledown order %v, want emptiest first: %s, %s, %s", order, empty.Addr, few.Addr, full.Addr)
	}
	costs, patches := k.hidden.sent()
	if patches != 3 {
		t.Errorf("%d cost patches, want one per pod", patches)
	}
	cost := func(b *backend) int {
		t.Helper()
		c, err := strconv.Atoi(costs[k.pod[b.Addr]])
		if err != nil {
			t.Fatalf("cost of %s: %q: %v", k.pod[b.Addr], costs[k.pod[b.Addr]], err)
		}
		return c
	}
	// Below 0, the cost of a pod without the annotation, and the emptier
	// the cheaper.
	if !(cost(empty) <= cost(few) && cost(few) < 0 && 0 < cost(full)) {
		t.Errorf("costs %v: want %s <= %s < 0 < %s", costs, k.pod[empty.Addr], k.pod[few.Addr], k.pod[full.Addr])
	}

	// New dials during the drain reach only the pod that stays; 8 live
	// connections still need one pod.
	for i := range 2 {
		if b := dialOne(i); b != full {
			t.Fatalf("dial %d during the drain reached draining pod %s", i, k.pod[b.Addr])
		}
	}
	if few.Live.Load() != 1 || empty.Live.Load() != 0 {
		t.Fatalf("draining backends hold %d and %d connections, want 1 and 0", few.Live.Load(), empty.Live.Load())
	}

	// Patched but not visible: no amount of time lets the scale-down through.
	for _, name := range []string{k.pod[empty.Addr], k.pod[few.Addr], k.pod[full.Addr]} {
		p, err := k.client.CoreV1().Pods(kubeNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c, ok := p.Annotations[podcost.CostAnnotation]; ok {
			t.Fatalf("pod %s shows cost %s before the test revealed it", name, c)
		}
	}
	k.clock.Step(time.Hour)
	if got := desired(); got != 3 {
		t.Fatalf("desiredReplicas with no cost visible = %d, want 3", got)
	}
	// One draining pod's cost visible is not enough.
	k.reveal(k.pod[empty.Addr])
	k.clock.Step(time.Hour)
	if got := desired(); got != 3 {
		t.Fatalf("desiredReplicas with %s's cost still missing = %d, want 3", k.pod[few.Addr], got)
	}

	// Every cost visible: the settle delay starts at the first reading that
	// sees them all.
	k.reveal(k.pod[few.Addr], k.pod[full.Addr])
	for name, want := range costs {
		p, err := k.client.CoreV1().Pods(kubeNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Annotations[podcost.CostAnnotation]; got != want {
			t.Fatalf("pod %s cost in the API server = %q, want %q", name, got, want)
		}
	}
	if got := desired(); got != 3 {
		t.Fatalf("desiredReplicas when the costs were just observed = %d, want 3 until the settle delay", got)
	}
	k.clock.Step(costSettle - time.Millisecond)
	if got := desired(); got != 3 {
		t.Fatalf("desiredReplicas 1ms before the settle delay = %d, want 3", got)
	}
	k.clock.Step(time.Millisecond)
	if got := desired(); got != 1 {
		t.Fatalf("desiredReplicas after the costs settled = %d, want 1", got)
	}
	if _, n := k.hidden.sent(); n != 3 {
		t.Errorf("%d cost patches by the end, want still 3 (no repeats)", n)
	}

	// Released to KEDA, the drained pods still take nothing new.
	for i := range 2 {
		if b := dialOne(i); b != full {
			t.Fatalf("dial %d after the release reached draining pod %s", i, k.pod[b.Addr])
		}
	}
	if got := few.Seen.Load() + empty.Seen.Load(); got != 12 {
		t.Errorf("draining backends accepted %d connections in all, want only the first 12", got)
	}
}
