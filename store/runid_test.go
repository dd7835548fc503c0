package store_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/redistest"
)

// infoCalls is how many INFO commands Redis ran, a script's included, this
// one too.
func infoCalls(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	return redistest.CommandCalls(t, rdb)["info"]
}

// clusterInfoCalls is infoCalls summed over a cluster's masters.
func clusterInfoCalls(t *testing.T, rdb *redis.ClusterClient) int {
	t.Helper()
	var mu sync.Mutex
	total := 0
	if err := rdb.ForEachMaster(context.Background(), func(_ context.Context, c *redis.Client) error {
		n := infoCalls(t, c)
		mu.Lock()
		defer mu.Unlock()
		total += n
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return total
}

// lifecycles admits and releases n connections through s.
func lifecycles(t *testing.T, s *store.Store, epoch string, n int) {
	t.Helper()
	ctx := context.Background()
	for range n {
		a, err := s.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 5, Policy: fleets.PolicyPack, Instance: "e1", Epoch: epoch, Now: storetest.T0})
		if err != nil || a.Pod == "" {
			t.Fatalf("admit: %+v %v", a, err)
		}
		if got, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: epoch, Seq: 0, Releases: []store.ReleaseCount{{Pod: a.Pod, N: 1}}}); err != nil || got != 1 {
			t.Fatalf("release: %d %v", got, err)
		}
	}
}

// The admit and release scripts learn Redis' run_id from their text loaded
// for the running process, not from INFO on every call; with
// --redis-run-check=per-call they read INFO each time.
func TestHotScriptsReadNoInfo(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := store.NewStore(rdb, "wsgate")
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
	epoch := storetest.EpochOf(t, s, "chat", "e1")
	lifecycles(t, s, epoch, 1) // loads the scripts for this process
	before := infoCalls(t, rdb)
	lifecycles(t, s, epoch, 20)
	// The test's own INFO commandstats is one call.
	if got := infoCalls(t, rdb) - before; got != 1 {
		t.Errorf("20 admissions and releases ran %d INFO commands; want none of their own", got-1)
	}

	perCall := s.WithRunCheckPerCall()
	before = infoCalls(t, rdb)
	lifecycles(t, perCall, epoch, 20)
	if got := infoCalls(t, rdb) - before - 1; got != 40 {
		t.Errorf("with the run check per call, 20 admissions and releases ran %d INFO commands; want 40", got)
	}
}

// On a Cluster the scripts are loaded into the master of the fleet's slot.
func TestHotScriptsReadNoInfoOnACluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	s := store.NewStore(rdb, "wsgate")
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
	epoch := storetest.EpochOf(t, s, "chat", "e1")
	lifecycles(t, s, epoch, 1)
	before := clusterInfoCalls(t, rdb)
	lifecycles(t, s, epoch, 20)
	if got := clusterInfoCalls(t, rdb) - before; got != 3 { // one per master: the count's own
		t.Errorf("20 admissions and releases on a cluster ran %d INFO commands; want none of their own", got-3)
	}
}

// A script text loaded for one Redis process is not in the next one, even
// when that one comes back with the old data (RDB or AOF, whose epoch
// names the old process): the hot scripts then read the new run_id, and
// the epoch is refused, as INFO in every call would have refused it.
func TestHotScriptsAfterARestartWithOldData(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"rdb", nil},
		{"aof", []string{"--appendonly", "yes", "--appendfsync", "always"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, tc.extra...)
			rdb := srv.Client()
			ctx := context.Background()
			s := store.NewStore(rdb, "wsgate")
			storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
			epoch := storetest.EpochOf(t, s, "chat", "e1")
			lifecycles(t, s, epoch, 1)
			if tc.extra == nil {
				srv.Save()
			}
			for i := range 2 { // twice in a row: each restart is a new process
				srv.RestartWithData()
				a, err := s.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 5, Policy: fleets.PolicyPack, Instance: "e1", Epoch: epoch, Now: storetest.T0})
				if err != nil {
					t.Fatalf("admit after restart %d: %v", i+1, err)
				}
				if a.Fence != store.FenceEpoch {
					t.Fatalf("admit after restart %d with the old epoch: %+v; want fenced (epoch)", i+1, a)
				}
				if _, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: epoch, Seq: 0, Releases: []store.ReleaseCount{{Pod: "10.0.0.1:80", N: 1}}}); err == nil {
					t.Fatalf("release after restart %d with the old epoch was not fenced", i+1)
				}
			}
		})
	}
}

// A server that refuses to load the texts (here a user without SCRIPT
// LOAD) gets the scripts that read INFO on every call: admissions and
// releases go on through Redis.
func TestHotScriptsWhenScriptLoadIsRefused(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.ACLClient("no-load", strings.Replace(redistest.TrackerACL, "+script|load ", "", 1))
	s := store.NewStore(rdb, "wsgate")
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
	epoch := storetest.EpochOf(t, s, "chat", "e1")
	// The first NOSCRIPT of each INFO text has it ask the server once more.
	lifecycles(t, s, epoch, 2)
	admin := srv.Client()
	before := infoCalls(t, admin)
	lifecycles(t, s, epoch, 10)
	if got := infoCalls(t, admin) - before - 1; got != 20 {
		t.Errorf("10 admissions and releases without SCRIPT LOAD ran %d INFO commands; want 20 (per call)", got)
	}
}
