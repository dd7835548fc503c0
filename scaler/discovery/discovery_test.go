package discovery_test

import (
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
)

const ns = "apps"

func newMiniStore(t *testing.T) *store.Store {
	t.Helper()
	s, _ := newMini(t)
	return s
}

// newMini is a store on miniredis and the server, whose clock a test may
// set (Redis' clock judges leases and recovery waits).
func newMini(t *testing.T) (*store.Store, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	s := store.NewStore(rdb, "wsgate").WithoutRestartDetection()
	clients.Store(s, rdb)
	t.Cleanup(func() { clients.Delete(s) })
	return s, mr
}

// clients are the Redis clients of the stores newMini made, for tests
// that look at Redis itself.
var clients sync.Map // *store.Store -> *redis.Client

func ptr[T any](v T) *T { return &v }

func endpoint(ip, pod string, ready, terminating bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready), Serving: ptr(true), Terminating: ptr(terminating)},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod},
		NodeName:   ptr("node-" + pod),
	}
}

// slice is an EndpointSlice of service with a "ws" port 8080 listed after
// a "metrics" port, so picking the first port would be wrong.
func slice(name, service string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("metrics"), Port: ptr(int32(9090))},
			{Name: ptr("ws"), Port: ptr(int32(8080))},
		},
		Endpoints: eps,
	}
}

// waitLimit bounds the tests' waits (test/await): the informer delivers
// events on its own goroutine and the Registry writes on another.
const waitLimit = 30 * time.Second

type view struct {
	pods  map[string]fleets.Pod
	avail []string
	load  map[string]int
}

func readView(t *testing.T, s *store.Store, fleet string) view {
	t.Helper()
	ctx := context.Background()
	snap, err := s.Snapshot(ctx, fleet, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rdb, _ := clients.Load(s)
	avail, err := rdb.(*redis.Client).ZRange(ctx, s.Keys(fleet).Avail(), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(avail)
	return view{pods: snap.Pods, avail: avail, load: snap.Load}
}

func (v view) is(pods map[string]bool, avail ...string) bool {
	if len(v.pods) != len(pods) || len(v.avail) != len(avail) {
		return false
	}
	for addr, ready := range pods {
		if p, ok := v.pods[addr]; !ok || p.Ready != ready {
			return false
		}
	}
	for i := range avail {
		if v.avail[i] != avail[i] {
			return false
		}
	}
	return true
}

func TestDiscoveryFollowsSlices(t *testing.T) {
	st, mr := newMini(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Tracker instance e1 heartbeats: the first heartbeat starts the epoch,
	// which grants nothing for its recovery wait (an instance TTL, of Redis'
	// clock and of a tracker's). Redis' clock is frozen, then moved past it;
	// e1's lease outlasts the test.
	const recoveryWait = 10 * time.Second
	base := time.Now()
	mr.SetTime(base)
	e1, err := st.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour, RecoveryWait: recoveryWait, Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	// e1 watched the wait pass on its own clock too, and confirms it.
	mr.SetTime(base.Add(recoveryWait))
	if _, err := st.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour,
		RecoveryWait: recoveryWait, Seq: 2, Confirm: e1.Epoch}); err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(
		slice("chat-a", "chat", endpoint("10.0.0.1", "chat-1", true, false), endpoint("10.0.0.2", "chat-2", true, false)),
		slice("envoy-a", "envoy", endpoint("10.1.0.1", "envoy-1", true, false), endpoint("10.1.0.2", "envoy-2", false, false)),
		slice("other-a", "other", endpoint("10.9.0.1", "other-1", true, false)),
	)
	reg := discovery.NewRegistry(st)
	fcs := []fleets.Fleet{{Name: "chat", Service: "chat", Port: "ws", EnvoyService: "envoy"}}
	d, err := discovery.New(client, ns, fcs, reg, 0)
	if err != nil {
		t.Fatal(err)
	}
	go reg.Run(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	slices := client.DiscoveryV1().EndpointSlices(ns)

	const a1, a2, a3 = "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"
	await.True(t, "the first slice in Redis", waitLimit, func() bool {
		return readView(t, st, "chat").is(map[string]bool{a1: true, a2: true}, a1, a2)
	})
	if got := readView(t, st, "chat").pods[a1]; got.Name != "chat-1" || got.Node != "node-chat-1" {
		t.Errorf("pod %s registered as %+v, want name chat-1 on node-chat-1", a1, got)
	}
	if got := d.ExpectedInstances("chat"); got != 1 {
		t.Errorf("ExpectedInstances = %d, want 1 (one of two Envoy endpoints is ready)", got)
	}

	// A connection on pod 2 before it stops being ready: it stays counted.
	now := time.Now()
	if a, err := st.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 5, Policy: fleets.PolicySpread, Instance: "e1", Epoch: e1.Epoch, Now: now}); err != nil || a.Pod == "" {
		t.Fatalf("admit: %+v, %v", a, err)
	}
	if a, err := st.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 5, Policy: fleets.PolicySpread, Instance: "e1", Epoch: e1.Epoch, Now: now}); err != nil || a.Pod == "" {
		t.Fatalf("admit: %+v, %v", a, err)
	}

	if _, err := slices.Create(ctx, slice("chat-b", "chat", endpoint("10.0.0.3", "chat-3", true, false)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	await.True(t, "a second slice", waitLimit, func() bool {
		return readView(t, st, "chat").is(map[string]bool{a1: true, a2: true, a3: true}, a1, a2, a3)
	})

	notReady := slice("chat-a", "chat", endpoint("10.0.0.1", "chat-1", true, false), endpoint("10.0.0.2", "chat-2", false, false))
	if _, err := slices.Update(ctx, notReady, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await.True(t, "a not-ready endpoint out of avail", waitLimit, func() bool {
		return readView(t, st, "chat").is(map[string]bool{a1: true, a2: false, a3: true}, a1, a3)
	})
	if got := readView(t, st, "chat").load[a2]; got != 1 {
		t.Errorf("load of the not-ready pod = %d, want its live connection still counted (1)", got)
	}

	// Terminating: Kubernetes may still say serving; no new connection goes there.
	terminating := endpoint("10.0.0.3", "chat-3", true, true)
	if _, err := slices.Update(ctx, slice("chat-b", "chat", terminating), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await.True(t, "a terminating endpoint out of avail", waitLimit, func() bool {
		return readView(t, st, "chat").is(map[string]bool{a1: true, a2: false, a3: false}, a1)
	})

	if err := slices.Delete(ctx, "chat-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	await.True(t, "a deleted slice's pod out of the registry", waitLimit, func() bool {
		return readView(t, st, "chat").is(map[string]bool{a1: true, a2: false}, a1)
	})

	if _, err := client.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice("envoy-a", "envoy",
		endpoint("10.1.0.1", "envoy-1", true, false), endpoint("10.1.0.2", "envoy-2", true, false)), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await.True(t, "the second Envoy endpoint ready", waitLimit, func() bool { return d.ExpectedInstances("chat") == 2 })

	cancel()
	if err := <-runErr; err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
}

func TestDiscoveryRequiresAService(t *testing.T) {
	_, err := discovery.New(fake.NewClientset(), ns, []fleets.Fleet{{Name: "static", Pods: []string{"10.0.0.1:80"}}}, discovery.NewRegistry(newMiniStore(t)), 0)
	if err == nil {
		t.Fatal("New without any fleet naming a service: want an error")
	}
}

// SetFleets (a changed fleets file) follows a fleet added with a Service
// the informer did not watch, and judges a removed fleet's instances no
// more.
func TestSetFleetsFollowsANewService(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := newMiniStore(t)
	client := fake.NewClientset(
		slice("chat-a", "chat", endpoint("10.0.0.1", "chat-1", true, false)),
		slice("game-a", "game", endpoint("10.0.5.1", "game-1", true, false)),
		slice("envoy-a", "envoy", endpoint("10.1.0.1", "envoy-1", true, false)),
	)
	reg := discovery.NewRegistry(store)
	chat := fleets.Fleet{Name: "chat", Service: "chat", Port: "ws", EnvoyService: "envoy"}
	d, err := discovery.New(client, ns, []fleets.Fleet{chat}, reg, 0)
	if err != nil {
		t.Fatal(err)
	}
	go reg.Run(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	await.True(t, "chat's pod in Redis", waitLimit, func() bool {
		return readView(t, store, "chat").is(map[string]bool{"10.0.0.1:8080": true}, "10.0.0.1:8080")
	})
	if readView(t, store, "game").pods != nil && len(readView(t, store, "game").pods) != 0 {
		t.Fatal("game's pods registered before game is configured")
	}

	game := fleets.Fleet{Name: "game", Service: "game", Port: "ws", EnvoyService: "envoy"}
	if err := d.SetFleets([]fleets.Fleet{chat, game}); err != nil {
		t.Fatal(err)
	}
	await.True(t, "the added fleet's pod in Redis", waitLimit, func() bool {
		return readView(t, store, "game").is(map[string]bool{"10.0.5.1:8080": true}, "10.0.5.1:8080")
	})
	if alive, known := d.InstanceAlive("game", "envoy-1"); !alive || !known {
		t.Errorf("InstanceAlive(game, envoy-1) = %v, %v; want listed", alive, known)
	}

	if err := d.SetFleets([]fleets.Fleet{game}); err != nil {
		t.Fatal(err)
	}
	await.True(t, "only game judged", waitLimit, func() bool {
		_, chatKnown := d.InstanceAlive("chat", "envoy-1")
		alive, _ := d.InstanceAlive("game", "envoy-1")
		return !chatKnown && alive
	})
	if err := d.SetFleets([]fleets.Fleet{{Name: "static", Pods: []string{"10.0.0.9:80"}}}); err == nil {
		t.Error("SetFleets with no fleet naming a Service succeeded")
	}
	if alive, _ := d.InstanceAlive("game", "envoy-1"); !alive {
		t.Error("a refused SetFleets changed what discovery follows")
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
}
