package store_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/redistest"
)

// shardedChat fills a fleet "chat" of three shards on s: six pods, each in
// the group fleets.GroupOf puts it in, two instances heartbeating every
// group, and live connections admitted in every group and published by
// a heartbeat of each instance. It returns the
// pods by group.
func shardedChat(t *testing.T, s *store.Store) (fleets.Fleet, map[string][]fleets.Pod) {
	t.Helper()
	f := fleets.Fleet{Name: "chat", Shards: 3}
	byGroup := map[string][]fleets.Pod{}
	for _, p := range storetest.Pods("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80", "10.0.0.6:80", "10.0.0.7:80", "10.0.0.8:80") {
		g := fleets.GroupName(f.Name, fleets.GroupOf(p.Addr, f.Shards))
		byGroup[g] = append(byGroup[g], p)
	}
	if len(byGroup) != 3 {
		t.Fatalf("the test's pods fill %d groups, want 3: pick other addresses", len(byGroup))
	}
	for _, g := range f.GroupNames() {
		storetest.SetPods(t, s, g, byGroup[g])
		storetest.Register(t, s, g, "e1", "e2")
		for range 2 {
			storetest.Admit(t, s, g, 10, fleets.PolicyPack, "e1", storetest.T0)
		}
	}
	// One group refuses once: its pods are full.
	for range 10*len(byGroup["chat#2"]) - 2 {
		storetest.Admit(t, s, "chat#2", 10, fleets.PolicyPack, "e2", storetest.T0)
	}
	if a := storetest.Admit(t, s, "chat#2", 10, fleets.PolicyPack, "e2", storetest.T0); a.Reason != store.ReasonCapacity {
		t.Fatalf("chat#2 full: admission %+v, want a capacity refusal", a)
	}
	// The instances heartbeat what they were granted: Summary.Live is
	// their totals.
	for _, g := range f.GroupNames() {
		storetest.Republish(t, s, g, storetest.T0, "e1", "e2")
	}
	return f, byGroup
}

func clusterStore(t *testing.T) *store.Store {
	t.Helper()
	cl := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	return store.NewStore(rdb, "wsgate")
}

func TestFleetSummarySumsTheGroupsOnACluster(t *testing.T) {
	s := clusterStore(t)
	ctx := context.Background()
	f, byGroup := shardedChat(t, s)

	got, err := s.FleetSummary(ctx, f, storetest.T0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Groups) != 3 || got.Groups[0].Fleet != "chat" || got.Groups[2].Fleet != "chat#2" {
		t.Fatalf("groups %+v, want chat, chat#1, chat#2 in order", got.Groups)
	}
	var live, pods int64
	for _, g := range got.Groups {
		live += g.Live
		pods += g.Pods
		if g.Alive != 2 || g.Synced != 2 {
			t.Errorf("group %s: alive %d synced %d, want 2 and 2", g.Fleet, g.Alive, g.Synced)
		}
	}
	wantLive := int64(2*2 + 10*len(byGroup["chat#2"]))
	if got.Fleet != "chat" || got.Live != wantLive || live != wantLive {
		t.Errorf("fleet %s live %d (groups %d), want chat and %d", got.Fleet, got.Live, live, wantLive)
	}
	if got.Pods != 8 || got.Ready != 8 || got.Placeable != 8 || pods != 8 {
		t.Errorf("pods %d ready %d placeable %d, want 8 each", got.Pods, got.Ready, got.Placeable)
	}
	// Every tracker heartbeats every group: the fleet has 2 of them, not 6.
	if got.Alive != 2 || got.Synced != 2 {
		t.Errorf("fleet alive %d synced %d, want 2 and 2", got.Alive, got.Synced)
	}
	if c := got.Rejections[store.ReasonCapacity]; c.M5 != 1 || c.H1 != 1 {
		t.Errorf("capacity rejections %+v, want the one of chat#2", c)
	}
	if got.Epoch == "" || got.EpochStart().IsZero() {
		t.Errorf("fleet epoch %q (start %v): want the groups' joined, with a start", got.Epoch, got.EpochStart())
	}

	// A group with no epoch (its shard lost its data) leaves the fleet
	// without one: not whole.
	groups := append([]store.Summary(nil), got.Groups...)
	groups[1].Epoch = ""
	if e := store.SumSummaries("chat", groups).Epoch; e != "" {
		t.Errorf("epoch with a group lacking one = %q, want empty", e)
	}
	// Synced is the least re-synced group's.
	groups[2].Synced = 1
	if n := store.SumSummaries("chat", groups).Synced; n != 1 {
		t.Errorf("synced with one group at 1 = %d, want 1", n)
	}
}

func TestFleetSummaryOfOneShardIsTheFleetsSummary(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80"))
		storetest.Admit(t, s, "chat", 1, fleets.PolicyPack, "e1", storetest.T0)
		want := storetest.Summary(t, s, "chat", storetest.T0)
		got, err := s.FleetSummary(context.Background(), fleets.Fleet{Name: "chat"}, storetest.T0)
		if err != nil {
			t.Fatal(err)
		}
		// Redis' clock moved between the two reads.
		got.RedisNow = want.RedisNow
		if !reflect.DeepEqual(got.Summary, want) || len(got.Groups) != 1 {
			t.Errorf("one shard: %+v, want %+v", got, want)
		}
	})
}

func TestFleetSnapshotAndGroupsOnACluster(t *testing.T) {
	s := clusterStore(t)
	ctx := context.Background()
	f, byGroup := shardedChat(t, s)

	found, err := s.FleetGroups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string][]string{"chat": {"chat", "chat#1", "chat#2"}}; !reflect.DeepEqual(found, want) {
		t.Errorf("FleetGroups = %v, want %v", found, want)
	}
	names, err := s.Fleets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(names, []string{"chat"}) {
		t.Errorf("Fleets = %v, want the groups folded into [chat]", names)
	}

	snap, err := s.FleetSnapshot(ctx, f, storetest.T0)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Pods) != 8 || len(snap.Groups) != 3 {
		t.Fatalf("merged snapshot has %d pods and %d groups, want 8 and 3", len(snap.Pods), len(snap.Groups))
	}
	loads, err := s.FleetPodLoads(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	var live int
	for _, p := range byGroup["chat#2"] {
		if snap.Load[p.Addr] != 10 || loads[p.Addr] != 10 {
			t.Errorf("pod %s of the full group: load %d / %d, want 10", p.Addr, snap.Load[p.Addr], loads[p.Addr])
		}
	}
	for _, n := range snap.Load {
		live += n
	}
	if int64(live) != snap.Live {
		t.Errorf("merged loads sum to %d, live %d", live, snap.Live)
	}
	// Each instance is one entry over the groups, holding what it holds in
	// all of them.
	if len(snap.Instances) != 2 || snap.Instances[0].ID != "e1" {
		t.Fatalf("instances %+v, want e1 and e2 once each", snap.Instances)
	}
	held := 0
	for _, n := range snap.Instances[0].Live {
		held += n
	}
	if held != 6 {
		t.Errorf("e1 holds %d over the groups, want 2 in each of 3", held)
	}
	if c := snap.Rejections[store.ReasonCapacity]; c.M5 != 1 {
		t.Errorf("capacity rejections %+v, want 1", c)
	}
}
