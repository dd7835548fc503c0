package store

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/test/redistest"
)

// A Redis that knows sync.lua but not instances.lua (it flushed its
// scripts, then a heartbeat that did not watch loaded sync.lua alone):
// the heartbeat that watches runs once, and its read of the instances is
// loaded and run after it. Run twice, it would count its rejections twice.
func TestSyncLoadsTheInstancesReadAlone(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	s := NewStore(rdb, "wsgate")
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := scriptSync.Load(ctx, rdb).Err(); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	res, err := s.Sync(ctx, SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour, Seq: 10, WatchInstances: true,
		Rejections: []RejectionCount{{Reason: ReasonCapacity, Bucket: Bucket(now), Count: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Instances["e1"] != 10 || len(res.Instances) != 1 {
		t.Errorf("instances: %v; want e1 at seq 10", res.Instances)
	}
	snap, err := s.Snapshot(ctx, "chat", now)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Rejections[ReasonCapacity].M5; got != 1 {
		t.Errorf("rejections the heartbeat carried, as Redis counts them: %d; want 1 (the heartbeat ran once)", got)
	}
}
