package tracker_test

import (
	"fmt"
	"hash/fnv"
	"testing"
	"time"

	"github.com/wsgate/wsgate/tracker"
)

// Regression tests from a review of the share fallback: each exceeded the
// cap before its fix.

// TestRejoinEndsAtDifferentTimes: after Redis lost its data, b sees a
// re-published at once and admits through Redis while a still waits for
// b; a must not add fallback admissions Redis never learns of.
func TestRejoinEndsAtDifferentTimes(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 2, "10.0.0.1:80")
	a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc)
	b := newTracker(t, rdb, "b", clk, tracker.FallbackShare, fc)
	settle(t, clk, a, b)
	mr.FlushAll()
	clk.Advance(time.Second)
	heartbeat(t, a) // a waits for b
	heartbeat(t, b) // b finds a re-published already
	for i := 0; i < 3; i++ {
		admit(t, a, "chat")
		admit(t, b, "chat")
	}
	if n := sumLocal(t, "chat", a, b)["10.0.0.1:80"]; n > 2 {
		t.Errorf("pod holds %d, cap 2", n)
	}
}

// TestMembershipChangeBetweenViews: two instances saw a newcomer (ranks
// shifted), two have not yet; until all have, nobody's parts may overlap.
func TestMembershipChangeBetweenViews(t *testing.T) {
	pod := ""
	for i := 0; i < 100000 && pod == ""; i++ {
		p := fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1)
		h := fnv.New32a()
		_, _ = h.Write([]byte(p))
		if int(h.Sum32()&0x7fffffff)%20 == 9 { // a spot where the shifted ranks collide
			pod = p
		}
	}
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 2, pod)
	var olds []*tracker.Tracker
	for _, id := range []string{"a", "b", "c", "d"} {
		olds = append(olds, newTracker(t, rdb, id, clk, tracker.FallbackShare, fc))
	}
	settle(t, clk, olds...)
	clk.Advance(time.Second)
	newcomer := newTracker(t, rdb, "0", clk, tracker.FallbackShare, fc)
	heartbeat(t, newcomer)
	heartbeat(t, olds[2], olds[3]) // c and d see the newcomer; a and b not yet
	mr.SetError("ERR outage")
	all := append(olds, newcomer)
	for i := 0; i < 3; i++ {
		for _, tr := range all {
			admit(t, tr, "chat")
		}
	}
	if n := sumLocal(t, "chat", all...)[pod]; n > 2 {
		t.Errorf("pod %s holds %d, cap 2", pod, n)
	}
}
