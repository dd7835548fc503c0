package podcost_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The scaler tells the hook its fleets (scaler.FleetSeries): their series
// exist at 0 before any patch, and a removed fleet's go.
func TestFleetSeries(t *testing.T) {
	e := newEnv(t, []int{0})
	e.hook.AddFleet("video")
	if n := testutil.CollectAndCount(e.metrics.Patches); n != 5 {
		t.Errorf("patch series after AddFleet: %d, want one per result (5)", n)
	}
	if n := testutil.CollectAndCount(e.metrics.Holding) + testutil.CollectAndCount(e.metrics.Draining); n != 2 {
		t.Errorf("holding and draining series after AddFleet: %d, want 2", n)
	}
	e.hook.RemoveFleet("video")
	if n := testutil.CollectAndCount(e.metrics.Patches) + testutil.CollectAndCount(e.metrics.Holding); n != 0 {
		t.Errorf("series after RemoveFleet: %d, want 0", n)
	}
}
