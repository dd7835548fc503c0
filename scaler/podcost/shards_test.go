package podcost_test

import (
	"context"
	"fmt"
	"sort"
	"testing"

	"github.com/wsgate/wsgate/fleets"
)

// A sharded fleet is scaled by one ReplicaSet: its scale-down order ranks
// the pods of all its groups together, emptiest first, wherever they live.
func TestScaleDownOrderSpansTheGroups(t *testing.T) {
	live := []int{5, 0, 3, 1, 7, 2, 0, 4, 6, 1}
	e := newEnvShards(t, live, 3)
	drained := []string{addr(1), addr(3), addr(6), addr(9)}
	groups := map[int]bool{}
	for _, a := range drained {
		groups[fleets.GroupOf(a, 3)] = true
	}
	if len(groups) < 2 {
		t.Fatalf("the emptiest pods all sit in one group: pick other addresses")
	}

	e.gate(t, 10, 6)
	sort.Strings(drained)
	if got := e.draining(t); fmt.Sprint(got) != fmt.Sprint(drained) {
		t.Fatalf("draining over the groups = %v, want the 4 emptiest %v", got, drained)
	}
	st, err := e.store.ScalerState(context.Background(), fleet)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.ScaleDown) != len(live) {
		t.Fatalf("scale-down order has %d pods, want all %d of the 3 groups", len(st.ScaleDown), len(live))
	}
	// Emptiest first; among equals the youngest (pod-6 before pod-1).
	want := []string{addr(6), addr(1), addr(9), addr(3), addr(5), addr(2), addr(7), addr(0), addr(8), addr(4)}
	for i, p := range st.ScaleDown {
		if p.Pod != want[i] {
			t.Fatalf("scale-down order %v, want %v", st.ScaleDown, want)
		}
	}
}
