package tracker

import (
	"fmt"
	"slices"
	"testing"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

func hintView(loads map[string]int) view {
	return newView(store.SyncResult{Avail: loads}, nil, 4)
}

// takeAll takes guesses until there is none, the script taking each.
func takeAll(h *hints, v *view, fc *fleets.Fleet) []store.Hint {
	var out []store.Hint
	for {
		g, ok := h.take(v, fc)
		if !ok {
			return out
		}
		out = append(out, g)
		h.result(g, true, g.Pod)
		if len(out) > 100 {
			panic("no end of guesses")
		}
	}
}

// Under spread the guesses are the emptiest pods in turn, each twice at
// most (within one of the emptiest, reuse's rule), never one the view saw
// fuller.
func TestHintsSpread(t *testing.T) {
	v := hintView(map[string]int{"a": 1, "b": 1, "c": 2, "d": 1, "e": 4})
	fc := &fleets.Fleet{MaxConnectionsPerPod: 4, Policy: fleets.PolicySpread}
	got := takeAll(&v.hint, &v, fc)
	if len(got) != 6 {
		t.Fatalf("%d guesses %v; want 6: the three emptiest, twice each", len(got), got)
	}
	seen := map[string]int{}
	for i, g := range got {
		seen[g.Pod]++
		if g.Min != 0 || g.Max != 2 {
			t.Errorf("guess %+v: range [%d, %d]; want [0, 2]", g, g.Min, g.Max)
		}
		if i >= 3 && g.Pod != got[i-3].Pod {
			t.Errorf("guess %d is %s; want the pods in turn (%s)", i, g.Pod, got[i-3].Pod)
		}
	}
	if seen["a"] != 2 || seen["b"] != 2 || seen["d"] != 2 {
		t.Errorf("guesses %v; want a, b and d twice each", seen)
	}
}

// Under pack the guess is the fullest pod under the cap until it is full;
// an empty pod is guessed only when the view saw every pod under the cap
// empty.
func TestHintsPack(t *testing.T) {
	fc := &fleets.Fleet{MaxConnectionsPerPod: 4, Policy: fleets.PolicyPack}
	v := hintView(map[string]int{"a": 2, "b": 3, "c": 3, "d": 4, "e": 0})
	got := takeAll(&v.hint, &v, fc)
	want := []string{"c", "b"} // the fullest under the cap, highest name first (the script's order)
	var pods []string
	for _, g := range got {
		pods = append(pods, g.Pod)
		if g.Min != 1 || g.Max != 3 {
			t.Errorf("guess %+v: range [%d, %d]; want [1, 3]", g, g.Min, g.Max)
		}
	}
	if !slices.Equal(pods, want) {
		t.Errorf("guesses %v; want %v, one each (room for one more)", pods, want)
	}

	v = hintView(map[string]int{"a": 0, "b": 0})
	g, ok := v.hint.take(&v, fc)
	if !ok || g.Pod != "b" || g.Min != 0 {
		t.Errorf("every pod empty: guess %+v %v; want b from 0", g, ok)
	}
	v = hintView(map[string]int{"a": 4, "b": 4})
	if g, ok := v.hint.take(&v, fc); ok {
		t.Errorf("every pod full: guess %+v; want none", g)
	}
}

// A guess the script did not take is not made again before the next
// heartbeat, even when the pick then chose the same pod; under spread no
// guess at all is (the view is out of date), under pack the pod the pick
// chose instead is the next guess.
func TestHintsLearnFromTheScript(t *testing.T) {
	fc := &fleets.Fleet{MaxConnectionsPerPod: 4, Policy: fleets.PolicySpread}
	v := hintView(map[string]int{"a": 0, "b": 0})
	g, _ := v.hint.take(&v, fc)
	v.hint.result(g, false, g.Pod) // refused, and the pick chose the same pod
	if next, ok := v.hint.take(&v, fc); ok {
		t.Fatalf("spread: guessed %s after a refusal; want no guess before the next heartbeat", next.Pod)
	}

	fc = &fleets.Fleet{MaxConnectionsPerPod: 4, Policy: fleets.PolicyPack}
	v = hintView(map[string]int{"a": 1, "b": 2})
	g, _ = v.hint.take(&v, fc)
	if g.Pod != "b" {
		t.Fatalf("pack guess %s; want b", g.Pod)
	}
	v.hint.result(g, false, "a")
	if g, _ = v.hint.take(&v, fc); g.Pod != "a" {
		t.Errorf("after the pick chose a, guess %s; want a", g.Pod)
	}
	v.hint.result(g, false, "") // refused: every pod full
	for _, next := range takeAll(&v.hint, &v, fc) {
		if next.Pod == "a" || next.Pod == "b" {
			t.Errorf("guessed %s again after a refusal", next.Pod)
		}
	}

	// A policy changed since the guesses were made starts them anew.
	v = hintView(map[string]int{"a": 1, "b": 2})
	v.hint.take(&v, fc)
	if g, _ := v.hint.take(&v, &fleets.Fleet{MaxConnectionsPerPod: 4, Policy: fleets.PolicySpread}); g.Pod != "a" {
		t.Errorf("after a change to spread, guess %s; want a", g.Pod)
	}
}

// The answer to a guess of the view before the last heartbeat does not
// touch the new view's guesses.
func TestHintAnswerOfAnOlderView(t *testing.T) {
	fc := fleets.Fleet{Name: "chat", MaxConnectionsPerPod: 10, Policy: fleets.PolicySpread}
	f := newFleet(fc, "chat")
	f.view = hintView(map[string]int{"a": 0})
	g, _ := f.view.hint.take(&f.view, &fc)
	gen := f.view.gen
	f.view = hintView(map[string]int{"a": 5}) // the heartbeat's view
	f.view.gen = gen + 1
	if _, ok := f.view.hint.take(&f.view, &fc); !ok {
		t.Fatal("no guess from the new view")
	}
	f.hintResultLocked(gen, g, false, "") // the old guess, refused
	if _, ok := f.view.hint.take(&f.view, &fc); !ok {
		t.Error("the new view's guesses ended on the answer to the old view's")
	}
}

// With every guess used up, take answers at once, however many pods.
func BenchmarkHintTakeExhausted(b *testing.B) {
	loads := map[string]int{}
	for i := range 10000 {
		loads[fmt.Sprintf("10.0.%d.%d:80", i/256, i%256)] = 3
	}
	fc := &fleets.Fleet{MaxConnectionsPerPod: 10, Policy: fleets.PolicySpread}
	v := hintView(loads)
	for {
		g, ok := v.hint.take(&v, fc)
		if !ok {
			break
		}
		v.hint.result(g, true, g.Pod)
	}
	b.ResetTimer()
	for range b.N {
		if _, ok := v.hint.take(&v, fc); ok {
			b.Fatal("a guess after all were used")
		}
	}
}
