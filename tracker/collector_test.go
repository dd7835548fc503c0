package tracker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/tracker"
)

func TestCollectorFollowsLocalConnections(t *testing.T) {
	store, mr := storetest.NewMini(t)
	clk := newClock()
	tr, err := tracker.New(tracker.Config{InstanceID: "envoy-0", Fleets: []fleets.Fleet{
		{Name: "chat", MaxConnectionsPerPod: 10, RatePerSecond: 100, Pods: []string{"10.0.0.1:8080"}},
	}}, store, tracker.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The first heartbeat starts an epoch that grants nothing for an
	// instance TTL, by Redis' clock and by the tracker's: the next one, past
	// it on both, confirms the wait and renews the lease.
	base, ttl := time.Now(), tr.Config().InstanceTTL
	mr.SetTime(base)
	if err := tr.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	mr.SetTime(base.Add(ttl))
	clk.Advance(ttl)
	if err := tr.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(tracker.NewCollector(tr, true))
	gauge := func() (float64, bool) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "wsgate_tracker_connections" {
				continue
			}
			for _, m := range mf.GetMetric() {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetName()+"="+l.GetValue())
				}
				if strings.Join(labels, ",") == "fleet=chat,pod=10.0.0.1:8080" {
					return m.GetGauge().GetValue(), true
				}
			}
		}
		return 0, false
	}
	var conns []string
	for range 2 {
		res, err := tr.Admit(ctx, "chat")
		if err != nil || !res.Admitted {
			t.Fatalf("admit: %+v %v", res, err)
		}
		conns = append(conns, res.Conn)
	}
	if v, ok := gauge(); !ok || v != 2 {
		t.Fatalf("gauge = %v (present %v), want 2", v, ok)
	}
	for _, c := range conns {
		release(t, tr, c)
	}
	if v, ok := gauge(); ok {
		t.Errorf("gauge %v still exported for a pod without connections", v)
	}
}
