package scaler_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/tracker"
)

// The scaler reads a sharded fleet as the sum of its groups (store.Store
// FleetSummary): these tests fill the groups through the store directly, as
// the trackers of a sharded fleet do, one group at a time.

func shardedFleets() []fleets.Fleet {
	return []fleets.Fleet{{Name: "chat", MaxConnectionsPerPod: 2, RatePerSecond: 1000, Burst: 1000, Shards: 3}}
}

// fillGroups gives every group of chat two pods (from the addresses the
// group's FNV picks) and one instance, and admits want[k] connections in
// group k, which the instance's heartbeat then publishes.
func fillGroups(t *testing.T, e *env, want []int) {
	t.Helper()
	f := shardedFleets()[0]
	pods := map[int][]string{}
	for i := 1; len(pods[0]) < 2 || len(pods[1]) < 2 || len(pods[2]) < 2; i++ {
		addr := "10.0.2." + strconv.Itoa(i) + ":80"
		if k := fleets.GroupOf(addr, f.Shards); len(pods[k]) < 2 {
			pods[k] = append(pods[k], addr)
		}
	}
	for k, g := range f.GroupNames() {
		storetest.SetPods(t, e.store, g, storetest.Pods(pods[k]...))
		storetest.Register(t, e.store, g, "envoy-a")
		for range want[k] {
			storetest.Admit(t, e.store, g, f.MaxConnectionsPerPod, fleets.PolicyPack, "envoy-a", time.Now())
		}
		storetest.Republish(t, e.store, g, time.Now(), "envoy-a")
	}
}

func TestShardedFleetIsSummedOverItsGroups(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: shardedFleets(), PollInterval: time.Hour}})
	fillGroups(t, e, []int{0, 1, 3})

	if got := e.metric("fleet", "chat", "metric", "connections"); got != 4 {
		t.Errorf("connections = %g, want 0+1+3 over the groups", got)
	}
	// 4 live on 6 placeable pods of cap 2.
	if got := e.metric("fleet", "chat", "metric", "saturation"); !near(got, 4.0/12) {
		t.Errorf("saturation = %g, want 4/12", got)
	}
	// The decision is recorded once, under the fleet (group 0's slot), and
	// counts every group's ready pods.
	if got := e.metric("fleet", "chat"); got < 1 {
		t.Errorf("desiredReplicas = %g, want at least 1", got)
	}
	if h := e.scalerHash("chat"); h["readyPods"] != "6" {
		t.Errorf("decision hash readyPods = %q, want the 6 pods of all groups (hash %v)", h["readyPods"], h)
	}
	if err := e.srv.Observe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := mustGauge(t, e.reg, "wsgate_scaler_fleet_connections", "chat"); v != 4 {
		t.Errorf("wsgate_scaler_fleet_connections{fleet=chat} = %g, want 4", v)
	}
}

func TestShardedFleetActiveOnAnyGroupsEvent(t *testing.T) {
	// A poll far longer than the test: only pub/sub can wake the stream,
	// and the first connection lands in the last group.
	e := start(t, opts{cfg: scaler.Config{Fleets: shardedFleets(), PollInterval: time.Hour}})
	fillGroups(t, e, []int{0, 0, 0})
	if e.active("fleet", "chat") {
		t.Fatal("an idle sharded fleet is active")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := e.client.StreamIsActive(ctx, ref("fleet", "chat"))
	if err != nil {
		t.Fatal(err)
	}
	got := receive(st)
	for _, g := range shardedFleets()[0].GroupNames() {
		e.waitSubscribers(g, 1)
	}
	storetest.Admit(t, e.store, "chat#2", 2, fleets.PolicyPack, "envoy-a", time.Now())
	storetest.Republish(t, e.store, "chat#2", time.Now(), "envoy-a") // publishes it: "active"
	select {
	case r := <-got:
		if r.err != nil || !r.res.Result {
			t.Fatalf("push: %v %v, want true", r.res, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no push within 10s after chat#2's first connection")
	}
}

func TestShardedFleetHeldWhileAGroupHasNoEpoch(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: shardedFleets(), PollInterval: time.Hour}})
	fillGroups(t, e, []int{1, 1, 1})
	e.metric("fleet", "chat", "metric", "connections")

	// chat#1's shard loses its data: the fleet's live connections are
	// undercounted until that group's trackers re-publish, so the whole
	// fleet is held, naming the group.
	keys := e.store.Keys("chat#1")
	if err := e.rdb.Del(context.Background(), keys.Epoch(), keys.Stats(), keys.Avail(), keys.Load()).Err(); err != nil {
		t.Fatal(err)
	}
	_, err := e.metricErr("fleet", "chat", "metric", "connections")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "group chat#1") {
		t.Fatalf("GetMetrics with chat#1 lost = %v, want Unavailable naming group chat#1", err)
	}
}

func TestShardedFleetHeldWhileRedisRecordsAnotherLayout(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: shardedFleets(), PollInterval: time.Hour}})
	fillGroups(t, e, []int{1, 1, 1})
	// The fleet ran unsharded: Redis records layout 1, the scaler's
	// fleets file says 3 (changed without resharding).
	recordLayout(t, e, 1)
	if err := e.srv.Observe(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := e.metricErr("fleet", "chat", "metric", "connections")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "records layout 1") || !strings.Contains(err.Error(), "shards 3") {
		t.Fatalf("GetMetrics with layout 1 recorded = %v, want Unavailable naming shards 3 and layout 1", err)
	}
	if v := mustGauge(t, e.reg, "wsgate_scaler_ready", "chat"); v != 0 {
		t.Errorf("wsgate_scaler_ready = %g, want 0", v)
	}
	// Redis records 3, as the fleets file says: reported again.
	recordLayout(t, e, 3)
	if err := e.srv.Observe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e.metric("fleet", "chat", "metric", "connections"); got != 3 {
		t.Errorf("connections = %g, want 3", got)
	}
}

func TestApplyRefusesAChangeOfShards(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: shardedFleets(), PollInterval: time.Hour}})
	changed := shardedFleets()
	changed[0].Shards = 2
	changed[0].MaxConnectionsPerPod = 7
	err := e.srv.Apply(changed)
	if err == nil || !strings.Contains(err.Error(), "shards 3 -> 2") || !strings.Contains(err.Error(), "forget-layout") {
		t.Fatalf("Apply with shards 3 -> 2 = %v, want a refusal naming both and what to do", err)
	}
	// Nothing of the file applied: the cap is still 2.
	if v := mustGauge(t, e.reg, "wsgate_scaler_fleet_cap", "chat"); v != 2 {
		t.Errorf("cap after the refused file = %g, want 2", v)
	}
}

// A tracker's lease is per group: the reaper watches and reaps each group
// of a sharded fleet, and counts the reaps under the fleet's name.
func TestReaperReapsEveryGroup(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: shardedFleets(), PollInterval: time.Hour, ExpiredInstances: fleets.ExpiredReap}})
	ctx := context.Background()
	groups := shardedFleets()[0].GroupNames()
	for _, g := range groups {
		if _, err := e.store.Sync(ctx, store.SyncRequest{Fleet: g, Instance: "envoy-dead", Lease: 100 * time.Millisecond, Seq: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range groups {
		e.awaitLeaseEnd(g, "envoy-dead")
	}
	if err := e.srv.Reap(ctx); err != nil { // the scaler's first sight
		t.Fatal(err)
	}
	e.clock.advance(ttl) // it watched each group's seq stand still a TTL
	if err := e.srv.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		if _, ok := e.instances(g)["envoy-dead"]; ok {
			t.Errorf("envoy-dead not reaped in %s", g)
		}
	}
	if got := mustCounter(t, e.reg, "chat"); got != 3 {
		t.Errorf("reaped counter of chat = %v, want 3 (one per group)", got)
	}
}

// With real trackers of a sharded fleet (the tracker's group choice and
// per-group heartbeats), the scaler sees what they admitted, summed.
func TestShardedFleetWithTrackers(t *testing.T) {
	fc := shardedFleets()[0]
	for i := 1; i <= 9; i++ {
		fc.Pods = append(fc.Pods, "10.0.6."+strconv.Itoa(i)+":80")
	}
	cfgs := []fleets.Fleet{fc}
	e := start(t, opts{cfg: scaler.Config{Fleets: cfgs, PollInterval: time.Hour}})
	a := e.trackerWith(tracker.Config{InstanceID: "envoy-a", Fleets: cfgs, Heartbeat: ttl / 5, InstanceTTL: ttl})
	b := e.trackerWith(tracker.Config{InstanceID: "envoy-b", Fleets: cfgs, Heartbeat: ttl / 5, InstanceTTL: ttl})
	na, _ := e.admit(a, "chat", 7)
	nb, _ := e.admit(b, "chat", 5)
	if na != 7 || nb != 5 {
		t.Fatalf("admitted %d and %d, want 7 and 5", na, nb)
	}
	used := 0
	for _, g := range fc.GroupNames() {
		snap, err := e.store.Snapshot(context.Background(), g, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if snap.Live > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("12 admissions used %d group(s), want them spread over several", used)
	}
	if got := e.metric("fleet", "chat", "metric", "connections"); got != 12 {
		t.Errorf("connections = %g, want 12 over the groups", got)
	}
	if err := e.srv.Observe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := mustGauge(t, e.reg, "wsgate_scaler_fleet_instances", "chat", "alive"); v != 2 {
		t.Errorf("alive instances = %g, want 2 (each heartbeats every group)", v)
	}
}

// recordLayout writes layout n as trackers record it: field shards of the
// layout hash in group 0's tag and of its mirror in group 1's.
func recordLayout(t *testing.T, e *env, n int) {
	t.Helper()
	for _, g := range []string{"chat", "chat#1"} {
		if err := e.rdb.HSet(context.Background(), e.store.Keys(g).Layout(), "shards", n).Err(); err != nil {
			t.Fatal(err)
		}
	}
}
