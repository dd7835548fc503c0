package discovery_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
)

// manyPods are n ready pods 10.0.3.1:80 ... .
func manyPods(n int) []fleets.Pod {
	out := make([]fleets.Pod, n)
	for i := range out {
		out[i] = fleets.Pod{Addr: fmt.Sprintf("10.0.3.%d:80", i+1), Name: fmt.Sprintf("p%d", i+1), Ready: true}
	}
	return out
}

func clusterStore(t *testing.T) *store.Store {
	t.Helper()
	cl := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	return store.NewStore(rdb, "wsgate")
}

// The Registry's guard is the store's own layout record.
var _ discovery.Layouts = (*store.Store)(nil)

// groupPods reads every group's registry of fleet chat under n shards:
// address -> the groups it is registered in.
func groupPods(t *testing.T, st *store.Store, n int) map[string][]string {
	t.Helper()
	in := map[string][]string{}
	for _, g := range (fleets.Fleet{Name: "chat", Shards: n}).GroupNames() {
		snap, err := st.Snapshot(context.Background(), g, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for a := range snap.Pods {
			in[a] = append(in[a], g)
		}
	}
	return in
}

func TestRegistryWritesEachPodToExactlyItsGroup(t *testing.T) {
	st := clusterStore(t)
	ctx := context.Background()
	reg := discovery.NewRegistry(st)
	reg.SetShards("chat", 3)
	pods := manyPods(12)
	reg.SetEndpoints("chat", pods)
	if err := reg.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	in := groupPods(t, st, 3)
	used := map[string]bool{}
	for _, p := range pods {
		want := fleets.GroupName("chat", fleets.GroupOf(p.Addr, 3))
		if g := in[p.Addr]; len(g) != 1 || g[0] != want {
			t.Errorf("pod %s registered in %v, want only %s", p.Addr, g, want)
		}
		used[want] = true
	}
	if len(used) != 3 {
		t.Fatalf("12 pods fill %d groups, want 3: pick other addresses", len(used))
	}
	fs, err := st.FleetSummary(ctx, fleets.Fleet{Name: "chat", Shards: 3}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if fs.Pods != 12 || fs.Placeable != 12 {
		t.Errorf("fleet summary pods %d placeable %d, want 12 and 12", fs.Pods, fs.Placeable)
	}

	// A pod gone leaves its group; draining flags reach the right group.
	reg.SetEndpoints("chat", pods[1:])
	reg.SetDraining("chat", []string{pods[2].Addr})
	if err := reg.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	in = groupPods(t, st, 3)
	if g := in[pods[0].Addr]; len(g) != 0 {
		t.Errorf("removed pod %s still registered in %v", pods[0].Addr, g)
	}
	snap, err := st.Snapshot(ctx, in[pods[2].Addr][0], time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Pods[pods[2].Addr].Draining {
		t.Errorf("pod %s not draining in its group %s", pods[2].Addr, in[pods[2].Addr][0])
	}

	// Another replica that has not decided draining keeps the flag, read
	// from the pod's own group.
	other := discovery.NewRegistry(st)
	other.SetShards("chat", 3)
	other.SetEndpoints("chat", pods[1:])
	if err := other.Publish(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	if snap, _ = st.Snapshot(ctx, in[pods[2].Addr][0], time.Now()); !snap.Pods[pods[2].Addr].Draining {
		t.Errorf("a second replica's write undrained %s", pods[2].Addr)
	}
}

func TestRegistryRefusesToWriteOnALayoutMismatch(t *testing.T) {
	st := store.NewStore(redistest.Start(t).Client(), "wsgate")
	ctx := context.Background()
	m := discovery.NewMetrics(prometheus.NewRegistry())

	// The fleet runs 3 shards: the first writer recorded it.
	first := discovery.NewRegistry(st)
	first.SetShards("chat", 3)
	first.SetEndpoints("chat", manyPods(6))
	if err := first.Publish(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	before := groupPods(t, st, 3)

	// A scaler whose fleets file still says 1 must not put every pod into
	// group 0.
	stale := discovery.NewRegistry(st, discovery.WithMetrics(m))
	stale.SetEndpoints("chat", manyPods(7))
	err := stale.Publish(ctx, "chat")
	if !errors.Is(err, discovery.ErrLayoutMismatch) {
		t.Fatalf("publish with shards 1 over layout 3 = %v, want ErrLayoutMismatch", err)
	}
	for _, want := range []string{"chat", "shards 1", "layout 3"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	after := groupPods(t, st, 3)
	if len(after) != len(before) {
		t.Errorf("registries changed on a refused write: %v -> %v", before, after)
	}
	if v := gauge(t, m.LayoutMismatch.WithLabelValues("chat")); v != 1 {
		t.Errorf("layout mismatch gauge = %g, want 1", v)
	}
	if n := counter(t, m.Publishes.WithLabelValues("chat", "layout_mismatch")); n != 1 {
		t.Errorf("refused publishes = %g, want 1", n)
	}

	// Fixed in the fleets file: the write goes through, the gauge clears.
	stale.SetShards("chat", 3)
	if err := stale.Publish(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	if v := gauge(t, m.LayoutMismatch.WithLabelValues("chat")); v != 0 {
		t.Errorf("layout mismatch gauge after the fix = %g, want 0", v)
	}
	if n := len(groupPods(t, st, 3)); n != 7 {
		t.Errorf("%d pods registered after the fix, want 7", n)
	}
}

func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// Discovery hands the Registry each fleet's shards before its endpoints, so
// the first write already splits the pods into their groups.
func TestDiscoverySplitsAShardedFleetsPods(t *testing.T) {
	st := newMiniStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var eps []discoveryv1.Endpoint
	for i := 1; i <= 9; i++ {
		eps = append(eps, endpoint(fmt.Sprintf("10.0.5.%d", i), fmt.Sprintf("chat-%d", i), true, false))
	}
	client := fake.NewClientset(slice("chat-a", "chat", eps...))
	reg := discovery.NewRegistry(st)
	d, err := discovery.New(client, ns, []fleets.Fleet{{Name: "chat", Service: "chat", Port: "ws", Shards: 3}}, reg, 0)
	if err != nil {
		t.Fatal(err)
	}
	go reg.Run(ctx)
	go func() { _ = d.Run(ctx) }()
	await.True(t, "9 pods over the 3 groups", waitLimit, func() bool { return len(groupPods(t, st, 3)) == 9 })
	if n := reg.Shards("chat"); n != 3 {
		t.Errorf("registry shards = %d, want 3", n)
	}
	for addr, groups := range groupPods(t, st, 3) {
		if want := fleets.GroupName("chat", fleets.GroupOf(addr, 3)); len(groups) != 1 || groups[0] != want {
			t.Errorf("pod %s in %v, want only %s", addr, groups, want)
		}
	}
}
