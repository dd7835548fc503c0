package tracker

import (
	"maps"
	"testing"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// A delta sends a pod whose counts moved since the last snapshot even
// when they came back to what the last acknowledged heartbeat sent: a
// connection that ended there may have a release Redis ignores (a later
// heartbeat made it stale) or never got, and an admission granted through
// Redis since then counts one more there (PROTOCOL.md, "Delta heartbeats").
func TestDeltaSendsAPodWhoseCountCameBack(t *testing.T) {
	f := newFleet(fleets.Fleet{Name: "chat"}, "chat")
	const p1, p2, p3 = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
	f.live = map[string]int{p1: 2, p2: 1}
	f.est = map[string]int{p1: 2, p2: 1}
	f.synced = map[string]podCounts{p1: {2, 2}, p2: {1, 1}, p3: {1, 1}}
	f.delta, f.base = true, store.SyncBase{Epoch: "e", Seq: 7}

	sent := func() map[string]int {
		counts, base := f.deltaLocked(f.heldForTest())
		if base == nil || *base != f.base {
			t.Fatalf("a delta's base %v; want %v", base, f.base)
		}
		out := map[string]int{}
		for _, c := range counts {
			out[c.Pod] = c.Live
		}
		return out
	}
	// p3 holds nothing any more: sent with 0; p1 and p2 as synced: not sent
	if got := sent(); !maps.Equal(got, map[string]int{p3: 0}) {
		t.Errorf("delta sends %v; want only p3 with 0", got)
	}
	// p1: one ended, one admitted since the snapshot: same count, sent
	f.movedLocked(p1)
	if got := sent(); !maps.Equal(got, map[string]int{p1: 2, p3: 0}) {
		t.Errorf("delta sends %v; want p1 (moved) and p3", got)
	}
	// a full heartbeat after a call of unknown outcome: everything
	f.restateLocked()
	if counts, base := f.deltaLocked(f.heldForTest()); base != nil || len(counts) != 2 {
		t.Errorf("after restate: %v, base %v; want every held pod and no base", counts, base)
	}
}

// heldForTest is every pod's counts as syncSnapshot takes them.
func (f *fleet) heldForTest() []store.PodCount {
	var held []store.PodCount
	for pod, n := range f.live {
		held = append(held, store.PodCount{Pod: pod, Live: n, Established: f.est[pod]})
	}
	return held
}
