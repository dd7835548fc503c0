package discovery_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
)

func threePods() []fleets.Pod {
	return []fleets.Pod{
		{Addr: "10.0.0.1:80", Name: "p1", Ready: true},
		{Addr: "10.0.0.2:80", Name: "p2", Ready: true},
		{Addr: "10.0.0.3:80", Name: "p3", Ready: false},
	}
}

func TestRegistryRepublishesWhenRedisLosesItsData(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	st := store.NewStore(rdb, "wsgate")
	clients.Store(st, rdb)
	ctx := context.Background()
	m := discovery.NewMetrics(prometheus.NewRegistry())
	reg := discovery.NewRegistry(st, discovery.WithMetrics(m))
	reg.SetEndpoints("chat", threePods())
	if err := reg.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if v := readView(t, st, "chat"); !v.is(map[string]bool{"10.0.0.1:80": true, "10.0.0.2:80": true, "10.0.0.3:80": false}, "10.0.0.1:80", "10.0.0.2:80") {
		t.Fatalf("after the first write: %+v", v)
	}
	// Nothing changed: Reconcile only reads.
	if err := reg.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if n := counter(t, m.Publishes.WithLabelValues("chat", "ok")); n != 1 {
		t.Errorf("writes after an idle Reconcile = %v, want 1", n)
	}

	srv.Kill()
	srv.Restart()
	// A tracker's heartbeat starts the new epoch, as in production.
	if _, err := st.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := reg.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if v := readView(t, st, "chat"); !v.is(map[string]bool{"10.0.0.1:80": true, "10.0.0.2:80": true, "10.0.0.3:80": false}, "10.0.0.1:80", "10.0.0.2:80") {
		t.Fatalf("after Redis restarted empty: %+v", v)
	}
	if n := counter(t, m.Publishes.WithLabelValues("chat", "ok")); n != 2 {
		t.Errorf("writes = %v, want 2 (one more after the restart)", n)
	}
}

func TestRegistryMergesDrainingAndKeepsAnotherReplicasFlags(t *testing.T) {
	store := newMiniStore(t)
	ctx := context.Background()
	a, b := discovery.NewRegistry(store), discovery.NewRegistry(store)
	a.SetEndpoints("chat", threePods())
	b.SetEndpoints("chat", threePods())

	a.SetDraining("chat", []string{"10.0.0.1:80"})
	if got := a.Pods("chat"); !got[0].Draining || got[1].Draining {
		t.Fatalf("merged pods = %+v, want only 10.0.0.1:80 draining", got)
	}
	if err := a.Publish(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	// Replica b has no opinion on draining: its write keeps a's flag.
	if err := b.Publish(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	v := readView(t, store, "chat")
	if !v.pods["10.0.0.1:80"].Draining || !v.is(map[string]bool{"10.0.0.1:80": true, "10.0.0.2:80": true, "10.0.0.3:80": false}, "10.0.0.2:80") {
		t.Fatalf("after both replicas wrote: %+v, want 10.0.0.1:80 draining and out of avail", v)
	}

	a.SetDraining("chat", nil)
	if err := a.Publish(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	if v := readView(t, store, "chat"); v.pods["10.0.0.1:80"].Draining || len(v.avail) != 2 {
		t.Fatalf("after undrain: %+v, want both ready pods placeable", v)
	}
}

func TestRegistryWritesNothingBeforeDiscoveryReported(t *testing.T) {
	store := newMiniStore(t)
	ctx := context.Background()
	if err := store.SetPods(ctx, "static", []fleets.Pod{{Addr: "10.0.0.9:80", Ready: true}}); err != nil {
		t.Fatal(err)
	}
	reg := discovery.NewRegistry(store)
	reg.SetDraining("static", []string{"10.0.0.9:80"})
	if err := reg.Publish(ctx, "static"); err != nil {
		t.Fatal(err)
	}
	if err := reg.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if v := readView(t, store, "static"); len(v.pods) != 1 || v.pods["10.0.0.9:80"].Draining {
		t.Fatalf("static registry = %+v, want it untouched", v)
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
