package store_test

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
)

// A trigger's record replaces its own hash only, drops the legacy one,
// and is read back by the other triggers (with a recommendation, recorded
// since the cutoff) and by ScalerState (sorted, expired ones left out).
func TestDecisionRecords(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
		ctx := context.Background()
		k := s.Keys("web")
		if err := b.Client.HSet(ctx, k.LegacyScaler(), "recommended", "9").Err(); err != nil {
			t.Fatal(err)
		}
		now := time.UnixMilli(1795608025000)
		record := func(trigger string, at time.Time, fields map[string]any) {
			t.Helper()
			rec := store.DecisionRecord{Fleet: "web", Trigger: trigger, Now: at, TTL: 5 * time.Minute, Fields: fields}
			if err := s.RecordDecision(ctx, rec); err != nil {
				t.Fatal(err)
			}
		}
		record("ns/b@2", now.Add(-time.Minute), map[string]any{"recommended": 4, "reason": "b"})
		record("ns/a@1", now, map[string]any{"recommended": 3, "reason": "a"})
		record("ns/held@3", now, map[string]any{"reason": "held"}) // no recommendation
		record("ns/a@1", now, map[string]any{"recommended": 5})    // replaces its own hash
		if n, _ := b.Client.Exists(ctx, k.LegacyScaler()).Result(); n != 0 {
			t.Error("the legacy scaler hash is still there")
		}
		if ttl, err := b.Client.TTL(ctx, k.Scaler("ns/a@1")).Result(); err != nil || ttl <= 0 || ttl > 5*time.Minute {
			t.Errorf("TTL of a decision %v (%v), want (0, 5m]", ttl, err)
		}
		others, err := s.OtherDecisions(ctx, store.OthersRequest{Fleet: "web", Trigger: "ns/a@1", Since: now.Add(-2 * time.Minute)})
		if want := map[string]string{"ns/b@2": "4"}; err != nil || !maps.Equal(others, want) {
			t.Errorf("others of ns/a@1 = %v (%v), want %v", others, err, want)
		}
		if others, err := s.OtherDecisions(ctx, store.OthersRequest{Fleet: "web", Trigger: "ns/held@3", Since: now.Add(-30 * time.Second)}); err != nil || !maps.Equal(others, map[string]string{"ns/a@1": "5"}) {
			t.Errorf("others of ns/held@3 since 30s ago = %v (%v), want ns/a@1's 5 only", others, err)
		}
		// An indexed trigger whose hash expired is left out.
		if err := b.Client.Del(ctx, k.Scaler("ns/b@2")).Err(); err != nil {
			t.Fatal(err)
		}
		st, err := s.ScalerState(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range st.Decisions {
			ids = append(ids, d.Trigger)
		}
		if !slices.Equal(ids, []string{"ns/a@1", "ns/held@3"}) || !maps.Equal(st.Decisions[0].Fields, map[string]string{"recommended": "5"}) {
			t.Errorf("decisions %+v, want ns/a@1 {recommended 5} and ns/held@3", st.Decisions)
		}
		if st.ScaleDown != nil {
			t.Errorf("scale-down order %v with none written", st.ScaleDown)
		}
	})
}

func TestScaleDownOrder(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		order := func() []store.RankedPod {
			t.Helper()
			st, err := s.ScalerState(ctx, "web")
			if err != nil {
				t.Fatal(err)
			}
			return st.ScaleDown
		}
		if err := s.SetScaleDown(ctx, "web", []string{"10.0.0.3:80", "10.0.0.1:80"}); err != nil {
			t.Fatal(err)
		}
		if err := s.SetScaleDown(ctx, "web", []string{"10.0.0.2:80", "10.0.0.3:80"}); err != nil {
			t.Fatal(err)
		}
		want := []store.RankedPod{{Pod: "10.0.0.2:80", Priority: 0}, {Pod: "10.0.0.3:80", Priority: 1}}
		if got := order(); !slices.Equal(got, want) {
			t.Errorf("order %v, want %v: the second write replaces the first", got, want)
		}
		if err := s.ClearScaleDown(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		if got := order(); got != nil {
			t.Errorf("order %v after clearing, want none", got)
		}
	})
}

// PodLoads reads every pod's live connections, placeable or not.
func TestPodLoads(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80"))
		a := storetest.Admit(t, s, "chat", 5, fleets.PolicyPack, "e1", storetest.T0)
		storetest.Admit(t, s, "chat", 5, fleets.PolicyPack, "e1", storetest.T0)
		pods := storetest.Pods("10.0.0.1:80", "10.0.0.2:80")
		for i := range pods {
			pods[i].Draining = pods[i].Addr == a.Pod // its count moves to load
		}
		storetest.SetPods(t, s, "chat", pods)
		other := "10.0.0.1:80"
		if a.Pod == other {
			other = "10.0.0.2:80"
		}
		got, err := s.PodLoads(ctx, "chat")
		if want := map[string]int{a.Pod: 2, other: 0}; err != nil || !maps.Equal(got, want) {
			t.Errorf("pod loads %v (%v), want %v", got, err, want)
		}
	})
}

// A subscription confirmed by SubscribeEvents sees "active" from the
// heartbeat whose instance's total rises from 0, never from the admission
// itself nor from a heartbeat that finds the instance's total above 0
// already, and the reason of the first rejection of each bucket.
func TestEventsSubscription(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		ev, err := s.SubscribeEvents(ctx, "chat")
		if err != nil {
			t.Fatal(err)
		}
		defer ev.Close()
		next := func(want string) {
			t.Helper()
			select {
			case got := <-ev.C():
				if got != want {
					t.Fatalf("event %q, want %q", got, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no event %q within 10s", want)
			}
		}
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
		a := storetest.Admit(t, s, "chat", 1, fleets.PolicyPack, "e1", storetest.T0)
		storetest.Admit(t, s, "chat", 1, fleets.PolicyPack, "e1", storetest.T0)
		next(string(store.ReasonCapacity)) // the admission published nothing
		storetest.Republish(t, s, "chat", storetest.T0, "e1")
		next("active") // e1's total: 0 -> 1
		storetest.Republish(t, s, "chat", storetest.T0, "e1")
		// 1 -> 1: nothing; the rejection of the next bucket comes next
		storetest.Admit(t, s, "chat", 1, fleets.PolicyPack, "e1", storetest.T0.Add(store.BucketWidth))
		next(string(store.ReasonCapacity))

		// Back to 0 (a heartbeat publishes it), then up again: active again.
		if n, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: storetest.EpochOf(t, s, "chat", "e1"),
			Releases: []store.ReleaseCount{{Pod: a.Pod, N: 1}}}); err != nil || n != 1 {
			t.Fatalf("release = %d, %v; want 1", n, err)
		}
		storetest.Republish(t, s, "chat", storetest.T0, "e1")
		storetest.Admit(t, s, "chat", 1, fleets.PolicyPack, "e1", storetest.T0)
		storetest.Republish(t, s, "chat", storetest.T0, "e1")
		next("active")

		// Another instance's first connection, while e1 holds one: the
		// fleet was active already, and its rise from 0 says nothing (the
		// rejection of a later bucket is the next event, not "active").
		storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e2", storetest.T0)
		storetest.Republish(t, s, "chat", storetest.T0, "e2")
		storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e2", storetest.T0.Add(2*store.BucketWidth))
		next(string(store.ReasonCapacity))

		// Both leave, with their connections: the fleet is idle again, and
		// the next instance's first connection wakes the scaler.
		for _, id := range []string{"e1", "e2"} {
			if _, err := s.Leave(ctx, store.LeaveRequest{Fleet: "chat", Instance: id, Seq: 1 << 40}); err != nil {
				t.Fatal(err)
			}
		}
		storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e3", storetest.T0)
		storetest.Republish(t, s, "chat", storetest.T0, "e3")
		next("active")
	})
}
