package report_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/report"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
)

// downGroup is a store whose one group cannot be read, as when its Redis
// Cluster shard is down.
type downGroup struct {
	*store.Store
	down string
}

func (d downGroup) Snapshot(ctx context.Context, fleet string, now time.Time) (store.Snapshot, error) {
	if fleet == d.down {
		return store.Snapshot{}, errors.New("snapshot " + fleet + ": dial tcp 127.0.0.1:1: connect: connection refused")
	}
	return d.Store.Snapshot(ctx, fleet, now)
}

// shardedState fills the three groups of chat (shards 3) on a miniredis:
// one pod and k+1 connections of envoy-1 in group k.
func shardedState(t *testing.T) (*store.Store, time.Time) {
	t.Helper()
	s, mr := storetest.NewMini(t)
	now := storetest.T0
	mr.SetTime(now)
	ctx := context.Background()
	f := fleets.Fleet{Name: "chat", Shards: 3}
	for k, g := range f.GroupNames() {
		var pod string
		for i := 1; pod == ""; i++ {
			if a := "10.0.7." + string(rune('0'+i)) + ":80"; fleets.GroupOf(a, 3) == k {
				pod = a
			}
		}
		must(t, s.SetPods(ctx, g, []fleets.Pod{{Addr: pod, Name: "p-" + g, Ready: true}}))
		res, err := s.Sync(ctx, store.SyncRequest{Fleet: g, Instance: "envoy-1", Lease: time.Hour, Seq: 1,
			Counts: []store.PodCount{{Pod: pod, Live: k + 1, Established: k + 1}}})
		must(t, err)
		_, err = s.Sync(ctx, store.SyncRequest{Fleet: g, Instance: "envoy-1", Lease: time.Hour, Seq: 2, Confirm: res.Epoch,
			Counts: []store.PodCount{{Pod: pod, Live: k + 1, Established: k + 1}}})
		must(t, err)
	}
	// Redis' clock, which readiness judges the epochs' age by, past the
	// settle time.
	mr.SetTime(now.Add(2 * time.Minute))
	return s, now.Add(2 * time.Minute)
}

func TestShardedFleetIsOneFleetWithItsGroups(t *testing.T) {
	s, now := shardedState(t)
	ctx := context.Background()
	r := report.NewReader(s)
	found, err := r.FleetGroups(ctx)
	must(t, err)
	if g := found["chat"]; len(found) != 1 || len(g) != 3 {
		t.Fatalf("FleetGroups = %v, want chat with 3 groups", found)
	}
	st, err := r.ReadGroups(ctx, "chat", found["chat"], now)
	must(t, err)
	rep := report.Build([]report.FleetState{st}, report.Options{Settle: time.Minute, ReadinessRatio: 0.95, Now: now})
	f := rep.Fleets[0]
	if f.Name != "chat" || f.Connections.Live != 1+2+3 || len(f.Connections.Pods) != 3 || len(f.Groups) != 3 {
		t.Fatalf("fleet %s: live %d, %d pods, %d groups; want chat, 6, 3, 3", f.Name, f.Connections.Live, len(f.Connections.Pods), len(f.Groups))
	}
	if !f.Readiness.Ready || f.Groups[1].Live != 2 || !f.Groups[1].Reachable {
		t.Errorf("readiness %+v, group 1 %+v: want ready, chat#1 reachable with 2 live", f.Readiness, f.Groups[1])
	}
	// envoy-1 is one instance of the fleet, holding its connections of
	// every group.
	if len(f.Detailed.Instances) != 1 {
		t.Errorf("instances %+v, want envoy-1 once", f.Detailed.Instances)
	}
}

func TestShardedFleetWithAGroupDown(t *testing.T) {
	s, now := shardedState(t)
	ctx := context.Background()
	r := report.NewReader(downGroup{s, "chat#1"})
	st, err := r.ReadGroups(ctx, "chat", []string{"chat", "chat#1", "chat#2"}, now)
	must(t, err)
	rep := report.Build([]report.FleetState{st}, report.Options{Settle: time.Minute, ReadinessRatio: 0.95, Now: now})
	f := rep.Fleets[0]
	if g := f.Groups[1]; g.Reachable || !strings.Contains(g.Error, "connection refused") {
		t.Errorf("group chat#1 = %+v, want unreachable with the error", g)
	}
	// The other groups are still shown, summed.
	if f.Connections.Live != 1+3 {
		t.Errorf("live %d, want 4 from the groups that answered", f.Connections.Live)
	}
	if f.Readiness.Ready || !strings.Contains(f.Readiness.Why, "group chat#1 unreachable") {
		t.Errorf("readiness %+v, want not ready naming chat#1", f.Readiness)
	}
	var out bytes.Buffer
	must(t, report.WriteTable(&out, rep))
	if !strings.Contains(out.String(), "GROUPS  3 shards") || !strings.Contains(out.String(), "chat#1  UNREACHABLE") {
		t.Errorf("table lacks the groups or chat#1 unreachable:\n%s", out.String())
	}
	// No group answering is an error, not an empty fleet.
	r = report.NewReader(downGroup{s, "chat"})
	if _, err := r.ReadGroups(ctx, "chat", []string{"chat"}, now); err == nil {
		t.Error("ReadGroups with its only group down succeeded")
	}
}
