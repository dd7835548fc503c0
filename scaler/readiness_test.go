package scaler

import (
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/store"
)

type countFunc func(string) int

func (f countFunc) ExpectedInstances(fleet string) int { return f(fleet) }

// TestReadinessExpectsTheEnvoyServiceEndpoints: with discovery's count of
// ready Envoy endpoints, a fresh scaler (nothing learned yet) still holds
// until that many trackers re-synced; the explicit flag wins over it.
func TestReadinessExpectsTheEnvoyServiceEndpoints(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	sum := store.Summary{Fleet: "chat", Epoch: "1799999000000-00aa", Synced: 2, Alive: 2, Published: 2}
	envoys := 4
	r := newReadiness(time.Second, 0.95, 0)
	if err := r.check(sum, now); err != nil {
		t.Fatalf("without a counter nothing is expected yet: %v", err)
	}
	r = newReadiness(time.Second, 0.95, 0)
	r.counter = countFunc(func(string) int { return envoys })
	err := r.check(sum, now)
	if err == nil || !strings.Contains(err.Error(), "2 of 4 expected tracker instances (ready endpoints of the Envoy Service)") {
		t.Fatalf("2 of 4 Envoys synced: %v", err)
	}
	envoys = 2
	if err := r.check(sum, now); err != nil {
		t.Fatalf("2 of 2 Envoys synced: %v", err)
	}
	r = newReadiness(time.Second, 0.95, 3)
	r.counter = countFunc(func(string) int { return 2 })
	if err := r.check(sum, now); err == nil || !strings.Contains(err.Error(), "--expected-instances") {
		t.Fatalf("the flag must win over the counter: %v", err)
	}
}

// TestReadinessHoldsWhenInstancesVanish: trackers reaped within an epoch
// (dead, or cut off from Redis with live connections) take their counts
// with them; the metric holds until the lower number lasted the settle time.
func TestReadinessHoldsWhenInstancesVanish(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	sum := store.Summary{Fleet: "chat", Epoch: "1799999000000-00aa", Synced: 10, Alive: 10, Published: 10}
	r := newReadiness(30*time.Second, 0.95, 0)
	if err := r.check(sum, now); err != nil {
		t.Fatal(err)
	}
	sum.Alive = 6
	if err := r.check(sum, now.Add(time.Second)); err == nil || !strings.Contains(err.Error(), "dropped from 10 to 6") {
		t.Fatalf("4 of 10 instances gone: %v", err)
	}
	if err := r.check(sum, now.Add(30*time.Second)); err == nil {
		t.Fatal("released before the drop lasted the settle time")
	}
	if err := r.check(sum, now.Add(31*time.Second)); err != nil {
		t.Fatalf("after the settle time the new count stands: %v", err)
	}
	sum.Alive = 4 // two more of 6 gone: more than one at a time
	if err := r.check(sum, now.Add(32*time.Second)); err == nil {
		t.Fatal("a further drop of two was not held")
	}
}

// TestReadinessTrustsInstancesThatLeft: drained Envoy pods leave Redis on
// their own (Summary.Left); their connections had ended, so four of ten
// leaving at once holds nothing, while a fifth vanishing still does.
func TestReadinessTrustsInstancesThatLeft(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	sum := store.Summary{Fleet: "chat", Epoch: "1799999000000-00aa", Synced: 10, Alive: 10, Published: 10, Left: 1}
	r := newReadiness(30*time.Second, 0.95, 0)
	if err := r.check(sum, now); err != nil {
		t.Fatal(err)
	}
	sum.Alive, sum.Left = 6, 5
	if err := r.check(sum, now.Add(time.Second)); err != nil {
		t.Fatalf("4 of 10 instances left on their own: %v", err)
	}
	sum.Alive, sum.Left = 3, 6 // one more left, two vanished
	if err := r.check(sum, now.Add(2*time.Second)); err == nil || !strings.Contains(err.Error(), "dropped from 6 to 3") {
		t.Fatalf("two vanished beside one that left: %v", err)
	}
}

// TestReadinessRidesOutRollingUpdates: one instance replaced at a time
// (10 -> 11 -> 10 ...) holds nothing, and a drop Kubernetes confirms
// (fewer ready Envoy endpoints) holds nothing either.
func TestReadinessRidesOutRollingUpdates(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	sum := store.Summary{Fleet: "chat", Epoch: "1799999000000-00aa", Synced: 10, Alive: 10, Published: 10}
	r := newReadiness(30*time.Second, 0.95, 0)
	for i, alive := range []int64{10, 11, 10, 11, 10, 9} {
		sum.Alive, sum.Published = alive, alive // a new instance publishes with its first heartbeat
		if err := r.check(sum, now.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("step %d (alive %d): %v", i, alive, err)
		}
	}
	envoys := 10
	r = newReadiness(30*time.Second, 0.95, 0)
	r.counter = countFunc(func(string) int { return envoys })
	sum.Alive, sum.Published = 10, 10
	if err := r.check(sum, now); err != nil {
		t.Fatal(err)
	}
	envoys, sum.Alive, sum.Published = 6, 6, 6 // a scale-in of Envoy
	if err := r.check(sum, now.Add(time.Second)); err != nil {
		t.Fatalf("a scale-in Kubernetes confirms: %v", err)
	}
	sum.Alive = 3 // three more vanish, Kubernetes still has 6 ready
	if err := r.check(sum, now.Add(2*time.Second)); err == nil {
		t.Fatal("instances vanished that Kubernetes says are ready: not held")
	}
}

// TestReadinessHoldsWhileAliveInstancesPublishNothing: trackers of a
// version before the heartbeats published their totals heartbeat (alive,
// synced) but are missing from the live count: the metric holds until
// enough of the synced ones publish, with or without an expected number.
func TestReadinessHoldsWhileAliveInstancesPublishNothing(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	sum := store.Summary{Fleet: "chat", Epoch: "1799999000000-00aa", Synced: 10, Alive: 10, Published: 6}
	r := newReadiness(time.Second, 0.9, 0)
	if err := r.check(sum, now); err == nil || !strings.Contains(err.Error(), "6 of 10 tracker instances synced in epoch 1799999000000-00aa published") {
		t.Fatalf("6 of 10 alive instances published: %v; want a hold", err)
	}
	sum.Published = 9
	if err := r.check(sum, now); err != nil {
		t.Fatalf("9 of 10 published, ratio 0.9: %v", err)
	}
}
