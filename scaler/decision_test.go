package scaler_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"

	"github.com/wsgate/wsgate/scaler"
)

// recordGate lets every scale-down through at once and remembers the
// recommendations it was handed.
type recordGate struct {
	mu   sync.Mutex
	seen []int
}

func (g *recordGate) Gate(_ context.Context, _ string, _, recommended int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seen = append(g.seen, recommended)
	return recommended
}

func (g *recordGate) calls() []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.seen)
}

func triggerID(t *testing.T, r *externalscaler.ScaledObjectRef) string {
	t.Helper()
	tr, err := scaler.ParseTrigger(r.GetScalerMetadata())
	if err != nil {
		t.Fatal(err)
	}
	return scaler.TriggerID(r, tr)
}

// Two ScaledObjects with other metadata on one fleet (and a second trigger
// of one of them) each keep their own decision: none overwrites another.
func TestEachTriggerKeepsItsOwnDecision(t *testing.T) {
	e := start(t, opts{})
	ctx := context.Background()
	p := e.store.Keys("web")
	// The single hash of earlier versions goes with the first write.
	if err := e.rdb.HSet(ctx, p.LegacyScaler(), "recommended", "9").Err(); err != nil {
		t.Fatal(err)
	}
	e.admit(e.tracker("envoy-a"), "web", 4)
	a := named("a", "fleet", "web")                               // ceil(4 / 1.6) = 3
	b := named("b", "fleet", "web", "targetUtilization", "0.5")   // ceil(4 / 1) = 4
	a2 := named("a", "fleet", "web", "targetUtilization", "0.25") // ceil(4 / 0.5) = 8
	want := map[*externalscaler.ScaledObjectRef]int{a: 3, b: 4, a2: 8}
	for _, r := range []*externalscaler.ScaledObjectRef{a, b, a2} {
		if got := e.metricOf(r); got != float64(want[r]) {
			t.Errorf("%s: desiredReplicas %v, want %d", triggerID(t, r), got, want[r])
		}
	}
	for r, n := range want {
		h, w := e.decision("web", r), strconv.Itoa(n)
		if h["recommended"] != w || h["reported"] != w || h["scaledObject"] != "ns/"+r.Name || !strings.Contains(h["params"], "targetUtilization=") {
			t.Errorf("%s: decision %v, want recommended %s", triggerID(t, r), h, w)
		}
		ttl, err := e.rdb.TTL(ctx, p.Scaler(triggerID(t, r))).Result()
		if err != nil || ttl <= 0 || ttl > scaler.DecisionTTL {
			t.Errorf("%s: TTL %v (%v), want (0, %v]", triggerID(t, r), ttl, err, scaler.DecisionTTL)
		}
	}
	ids, err := e.rdb.ZRange(ctx, p.Scalers(), 0, -1).Result()
	if err != nil || len(ids) != 3 {
		t.Errorf("index %v (%v), want 3 triggers", ids, err)
	}
	if n, _ := e.rdb.Exists(ctx, p.LegacyScaler()).Result(); n != 0 {
		t.Error("the legacy scaler hash is still there")
	}
	// KEDA's own keys and spelt-out defaults do not make another trigger.
	same := named("a", "fleet", "web", "targetUtilization", "0.8", "scalerAddress", "wsgate:9000")
	if triggerID(t, same) != triggerID(t, a) {
		t.Errorf("%s and %s: one trigger, two IDs", triggerID(t, same), triggerID(t, a))
	}
}

// The gate acts on the drain floor, the highest fresh recommendation of
// the fleet's triggers: two triggers wanting 1 and 2 of 3 ready pods hand
// it the same 2 every time (no flapping between two drains), the lower one
// reports 2 (no pod some trigger wants goes), and a trigger wanting more
// than ready holds the other at ready without scaling it up.
func TestGateFollowsTheHighestFreshRecommendation(t *testing.T) {
	g := &recordGate{}
	e := start(t, opts{gate: g})
	e.admit(e.tracker("envoy-a"), "web", 1)
	low := named("low", "fleet", "web")                             // ceil(1 / 1.6) = 1
	mid := named("mid", "fleet", "web", "targetUtilization", "0.4") // ceil(1 / 0.8) = 2

	if got := e.metricOf(low); got != 1 {
		t.Fatalf("low alone reports %v, want its own 1", got)
	}
	if got := e.metricOf(mid); got != 2 {
		t.Errorf("mid reports %v, want 2", got)
	}
	for range 2 {
		if got := e.metricOf(low); got != 2 {
			t.Errorf("low reports %v, want 2: mid still wants 2 pods", got)
		}
		e.metricOf(mid)
	}
	if got := g.calls(); !slices.Equal(got, []int{1, 2, 2, 2, 2, 2}) {
		t.Errorf("gate handed %v, want 1 then always 2", got)
	}
	h := e.decision("web", low)
	if h["recommended"] != "1" || h["reported"] != "2" || h["drainFloor"] != "2" || h["drivenBy"] != triggerID(t, mid) || !strings.Contains(h["reason"], triggerID(t, mid)) {
		t.Errorf("low's decision %v", h)
	}

	// A trigger above ready holds the others at ready, no higher.
	high := named("high", "fleet", "web", "targetUtilization", "0.125") // ceil(1 / 0.25) = 4
	if got := e.metricOf(high); got != 4 {
		t.Errorf("high reports %v, want 4", got)
	}
	if got := e.metricOf(low); got != 3 {
		t.Errorf("low reports %v beside high, want the 3 ready", got)
	}

	// Decisions older than the TTL no longer hold anyone.
	e.clock.advance(scaler.DecisionTTL + time.Second)
	if got := e.metricOf(low); got != 1 {
		t.Errorf("low reports %v once the others are stale, want its own 1", got)
	}
}
