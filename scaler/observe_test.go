package scaler_test

import (
	"context"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/test/promtest"
)

// The scaler's fleet series exist from the first scrape, and Observe sets
// them, wsgate_scaler_ready included, without any KEDA call; the per-pod
// numbers come once per fleet from Redis; a removed fleet's go.
func TestObserveExportsFleetsWithoutKEDA(t *testing.T) {
	e := start(t, opts{})
	s := promtest.Samples(t, e.reg)
	for _, name := range []string{
		"wsgate_scaler_ready{fleet=web}", "wsgate_scaler_reaped_instances_total{fleet=web}",
		"wsgate_scaler_fleet_connections{fleet=web}", "wsgate_scaler_fleet_pods{fleet=web,state=placeable}",
		"wsgate_scaler_fleet_instances{fleet=web,state=alive}", "wsgate_scaler_fleet_rejections_5m{fleet=web,reason=recovering}",
		"wsgate_scaler_fleet_saturation{fleet=cold}", "wsgate_scaler_fleet_read_errors_total{fleet=edge}",
	} {
		if v, ok := s[name]; !ok || v != 0 {
			t.Errorf("first scrape: %s = %v (present %v), want 0", name, v, ok)
		}
	}
	if v := s["wsgate_scaler_fleet_cap{fleet=web}"]; v != 2 {
		t.Errorf("first scrape: cap of web %v, want 2", v)
	}

	tr := e.tracker("envoy-0")
	if n, _ := e.admit(tr, "web", 3); n != 3 {
		t.Fatalf("admitted %d of 3", n)
	}
	if err := e.srv.Observe(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = promtest.Samples(t, e.reg)
	want := map[string]float64{
		"wsgate_scaler_ready{fleet=web}":                        1,
		"wsgate_scaler_fleet_connections{fleet=web}":            3,
		"wsgate_scaler_fleet_pods{fleet=web,state=placeable}":   3,
		"wsgate_scaler_fleet_instances{fleet=web,state=alive}":  1,
		"wsgate_scaler_fleet_instances{fleet=web,state=synced}": 1,
		"wsgate_scaler_fleet_saturation{fleet=web}":             0.5,
	}
	pods := 0.0
	for name, v := range s {
		if strings.HasPrefix(name, "wsgate_scaler_pod_connections{fleet=web,") {
			pods += v
		}
	}
	if pods != 3 {
		t.Errorf("pod_connections of web sum to %v, want 3", pods)
	}
	for name, v := range want {
		if s[name] != v {
			t.Errorf("after Observe: %s = %v, want %v", name, s[name], v)
		}
	}
	if _, ok := s[`wsgate_scaler_reported_value{fleet=web,metric=desiredReplicas}`]; ok {
		t.Error("reported_value exported without a KEDA call: it is what KEDA was told")
	}

	if err := e.srv.Apply([]fleets.Fleet{testFleets()[0]}); err != nil {
		t.Fatal(err)
	}
	for name := range promtest.Samples(t, e.reg) {
		if strings.Contains(name, "fleet=cold") || strings.Contains(name, "fleet=edge") {
			t.Errorf("cold and edge removed: %s still exported", name)
		}
	}
}

// While Redis does not answer, the fleet is held (ready 0) and the read
// failures are counted.
func TestObserveHoldsWhileRedisIsDown(t *testing.T) {
	e := start(t, opts{})
	e.tracker("envoy-0")
	if err := e.srv.Observe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := promtest.Samples(t, e.reg)["wsgate_scaler_ready{fleet=web}"]; v != 1 {
		t.Fatalf("ready %v, want 1", v)
	}
	e.redis.Kill()
	if err := e.srv.Observe(context.Background()); err == nil {
		t.Fatal("Observe with Redis killed: no error")
	}
	s := promtest.Samples(t, e.reg)
	if v := s["wsgate_scaler_ready{fleet=web}"]; v != 0 {
		t.Errorf("ready with Redis killed %v, want 0", v)
	}
	if v := s["wsgate_scaler_fleet_read_errors_total{fleet=web}"]; v != 1 {
		t.Errorf("read errors %v, want 1", v)
	}
}

// seriesGate is a scale-down gate with per-fleet series of its own (as the
// pod-deletion-cost hook): the scaler tells it the fleets configured.
type seriesGate struct {
	mu    sync.Mutex
	fleet map[string]bool
}

func (g *seriesGate) Gate(_ context.Context, _ string, _, recommended int) int { return recommended }
func (g *seriesGate) AddFleet(f string)                                        { g.set(f, true) }
func (g *seriesGate) RemoveFleet(f string)                                     { g.set(f, false) }

func (g *seriesGate) set(f string, on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if on {
		g.fleet[f] = true
	} else {
		delete(g.fleet, f)
	}
}

func TestGateSeriesFollowTheFleets(t *testing.T) {
	g := &seriesGate{fleet: map[string]bool{}}
	e := start(t, opts{gate: g})
	if want := map[string]bool{"web": true, "cold": true, "edge": true}; !reflect.DeepEqual(g.fleet, want) {
		t.Errorf("gate's fleets at start %v, want %v", g.fleet, want)
	}
	if err := e.srv.Apply([]fleets.Fleet{testFleets()[0]}); err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"web": true}; !reflect.DeepEqual(g.fleet, want) {
		t.Errorf("gate's fleets after cold and edge were removed %v, want %v", g.fleet, want)
	}
}
