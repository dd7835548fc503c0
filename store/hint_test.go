package store_test

import (
	"context"
	"maps"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/redistest"
)

// loads is each pod's count in fleet "chat": the placeable ones (avail) and
// the others (load).
func loads(t *testing.T, c redis.Cmdable) map[string]int {
	t.Helper()
	k := store.NewStore(nil, "wsgate").Keys("chat")
	out := map[string]int{}
	for _, key := range []string{k.Avail(), k.Load()} {
		zs, err := c.ZRangeWithScores(context.Background(), key, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, z := range zs {
			out[z.Member.(string)] = int(z.Score)
		}
	}
	return out
}

// An admission whose hint holds is granted on the hinted pod without the
// pick: the script runs no range read and no ZINCRBY, only the fence, the
// ZADD on the hint and the instance's entitlement (PROTOCOL.md, "Hinted
// admission").
func TestHintTakenSkipsThePick(t *testing.T) {
	rdb := redistest.Start(t).Client()
	s := store.NewStore(rdb, "wsgate")
	ctx := context.Background()
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
	epoch := storetest.EpochOf(t, s, "chat", "e1")
	req := store.AdmitRequest{Fleet: "chat", MaxPerPod: 2, Policy: fleets.PolicySpread, Instance: "e1", Epoch: epoch, Now: storetest.T0}
	// The pick (spread, every pod empty) would choose 10.0.0.1:80: the hint
	// names another one, which only the hint path can give.
	req.Hint = store.Hint{Pod: "10.0.0.3:80", Min: 0, Max: 1}
	if _, err := s.AdmitOne(ctx, req); err != nil { // loads the script
		t.Fatal(err)
	}
	before := redistest.CommandCalls(t, rdb)
	req.N = 1
	r, err := s.Admit(ctx, req)
	if err != nil || len(r.Pods) != 1 || r.Pods[0] != "10.0.0.3:80" || !r.HintTaken {
		t.Fatalf("admit with a hint: %+v %v; want 10.0.0.3:80, the hint taken", r, err)
	}
	after := redistest.CommandCalls(t, rdb)
	for _, cmd := range []string{"zrangebyscore", "zrevrangebyscore", "zincrby"} {
		if after[cmd] != before[cmd] {
			t.Errorf("a hinted admission ran %s %d times; want none", cmd, after[cmd]-before[cmd])
		}
	}
	if got := after["zadd"] - before["zadd"]; got != 1 {
		t.Errorf("a hinted admission ran ZADD %d times; want 1 (the grant's own)", got)
	}
	if got := loads(t, rdb); got["10.0.0.3:80"] != 2 || got["10.0.0.1:80"] != 0 {
		t.Errorf("counts %v; want 10.0.0.3:80 at 2", got)
	}
	if got := storetest.Held(t, rdb, "chat", "e1"); got != 2 {
		t.Errorf("e1 entitled to %d slots; want 2: a hinted grant is the instance's as any other", got)
	}
	// Now at the cap: the hint no longer holds, and the pick decides.
	r, err = s.Admit(ctx, req)
	if err != nil || len(r.Pods) != 1 || r.Pods[0] != "10.0.0.1:80" || r.HintTaken {
		t.Fatalf("admit with a hint on a full pod: %+v %v; want the pick's 10.0.0.1:80", r, err)
	}
}

// The reply says whether the hint was taken, also when the pick, after
// refusing it, chose the same pod.
func TestHintRefusedThenPickedIsNotTaken(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80"))
		req := store.AdmitRequest{Fleet: "chat", MaxPerPod: 4, Policy: fleets.PolicySpread, Instance: "e1", Epoch: storetest.EpochOf(t, s, "chat", "e1"), Now: storetest.T0, N: 4}
		if r, err := s.Admit(ctx, req); err != nil || len(r.Pods) != 4 {
			t.Fatalf("setup: %+v %v", r, err)
		}
		// both pods at 2: above the hint's range, and the pick's first
		req.N, req.Hint = 1, store.Hint{Pod: "10.0.0.1:80", Max: 1}
		r, err := s.Admit(ctx, req)
		if err != nil || len(r.Pods) != 1 || r.Pods[0] != "10.0.0.1:80" {
			t.Fatalf("admit: %+v %v; want the pick's 10.0.0.1:80", r, err)
		}
		if r.HintTaken {
			t.Error("the reply says the hint was taken; the script refused it (count 2, range [0, 1])")
		}
	})
}

// Several admissions in one call go where the pick puts them, as that many
// admissions in a row would: a hint names one pod, and is for one.
func TestHintIsForOneAdmission(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
		req := store.AdmitRequest{Fleet: "chat", MaxPerPod: 4, Policy: fleets.PolicySpread, Instance: "e1", Epoch: storetest.EpochOf(t, s, "chat", "e1"), Now: storetest.T0,
			N: 3, Hint: store.Hint{Pod: "10.0.0.3:80", Max: 4}}
		r, err := s.Admit(ctx, req)
		if err != nil || len(r.Pods) != 3 || r.HintTaken {
			t.Fatalf("admit 3 with a hint: %+v %v", r, err)
		}
		if got := loads(t, b.Client); !maps.Equal(got, map[string]int{"10.0.0.1:80": 1, "10.0.0.2:80": 1, "10.0.0.3:80": 1}) {
			t.Errorf("counts %v; want one on each pod, as three admissions in a row", got)
		}
	})
}

// A hint that does not hold leaves no trace: the pick decides as without
// it, and the hinted pod's count is what it was.
func TestHintRefusedIsThePick(t *testing.T) {
	a1, a2, a3 := "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
	for _, tc := range []struct {
		name   string
		policy fleets.Policy
		cap    int
		pods   []fleets.Pod
		held   []string // admitted first, without a hint, in order (pack: highest name first)
		hint   store.Hint
		want   string // the pod granted, "" when refused
	}{
		{"unknown pod", fleets.PolicySpread, 2, storetest.Pods(a1, a2), nil, store.Hint{Pod: "10.0.0.9:80", Max: 5}, a1},
		{"not ready", fleets.PolicySpread, 2, append(storetest.Pods(a1, a2), fleets.Pod{Addr: a3, Name: "p3"}), nil, store.Hint{Pod: a3, Max: 5}, a1},
		{"draining", fleets.PolicySpread, 2, append(storetest.Pods(a1, a2), fleets.Pod{Addr: a3, Name: "p3", Ready: true, Draining: true}), nil, store.Hint{Pod: a3, Max: 5}, a1},
		{"full", fleets.PolicySpread, 1, storetest.Pods(a1, a2), []string{a1}, store.Hint{Pod: a1, Max: 5}, a2},
		{"above the range", fleets.PolicySpread, 3, storetest.Pods(a1, a2), []string{a1}, store.Hint{Pod: a1, Max: 0}, a2},
		{"below the range", fleets.PolicyPack, 3, storetest.Pods(a1, a2, a3), []string{a3}, store.Hint{Pod: a1, Min: 1, Max: 2}, a3},
		{"every pod full", fleets.PolicyPack, 1, storetest.Pods(a1, a2), []string{a2, a1}, store.Hint{Pod: a2, Max: 5}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
				ctx := context.Background()
				storetest.SetPods(t, s, "chat", tc.pods)
				epoch := storetest.EpochOf(t, s, "chat", "e1")
				req := store.AdmitRequest{Fleet: "chat", MaxPerPod: tc.cap, Policy: tc.policy, Instance: "e1", Epoch: epoch, Now: storetest.T0}
				for _, pod := range tc.held {
					if a, err := s.AdmitOne(ctx, req); err != nil || a.Pod != pod {
						t.Fatalf("setup admission: %+v %v; want %s", a, err, pod)
					}
				}
				before := loads(t, b.Client)
				req.Hint, req.N = tc.hint, 1
				r, err := s.Admit(ctx, req)
				got := ""
				if len(r.Pods) == 1 {
					got = r.Pods[0]
				}
				if err != nil || got != tc.want || r.HintTaken {
					t.Fatalf("admit with hint %+v: %+v %v; want %q by the pick", tc.hint, r, err, tc.want)
				}
				want := maps.Clone(before)
				if tc.want != "" {
					want[tc.want]++
				}
				if got := loads(t, b.Client); !maps.Equal(got, want) {
					t.Errorf("counts %v after the admission; want %v (the hint's pod as it was)", got, want)
				}
				granted := 0
				if tc.want != "" {
					granted = 1
				}
				if got := storetest.Held(t, b.Client, "chat", "e1"); got != len(tc.held)+granted {
					t.Errorf("e1 entitled to %d slots; want %d", got, len(tc.held)+granted)
				}
			})
		})
	}
}
