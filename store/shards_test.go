package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
)

// The layout on a real redis-server (layout.lua, layout_mirror.lua): the
// first caller records its shards, in group 0's tag and in the mirror;
// a fleet with state in group 0 but no layout (run before the layout
// existed) gets 1 whatever the caller runs; a layout lost in either place
// comes back from the other; forget-layout's values record the next
// caller's (LayoutNext) or nothing (LayoutFrozen); and the tracker's ACL,
// which has no string commands, may do all of it.
func TestLayoutRecordsMirrorsAndSurvives(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	admin := srv.Client()
	s := store.NewStore(srv.ACLClient("wsgate-tracker", redistest.TrackerACL), "wsgate")
	layout := func(fleet string, n int) int {
		t.Helper()
		got, err := s.Layout(ctx, fleet, n)
		if err != nil {
			t.Fatalf("layout %s %d: %v", fleet, n, err)
		}
		return got
	}
	if got := layout("chat", 3); got != 3 {
		t.Fatalf("a fresh fleet's layout: %d, want the caller's 3", got)
	}
	for _, key := range []string{"{wsgate:chat}:layout", "{wsgate:chat#1}:layout"} {
		if v, err := admin.HGet(ctx, key, "shards").Result(); err != nil || v != "3" {
			t.Errorf("%s shards = %q %v, want 3", key, v, err)
		}
	}
	if got := layout("chat", 1); got != 3 {
		t.Errorf("another caller's shards replaced the recorded layout: %d", got)
	}

	// group 0's node lost its data (the layout with it): the mirror's
	// comes back, not the next caller's
	admin.Del(ctx, "{wsgate:chat}:layout")
	if got := layout("chat", 1); got != 3 {
		t.Errorf("after group 0 lost the layout, a caller with 1 got %d; want the mirror's 3", got)
	}
	// the mirror's node lost it: group 0's is copied back
	admin.Del(ctx, "{wsgate:chat#1}:layout")
	if got := layout("chat", 2); got != 3 {
		t.Errorf("after the mirror lost the layout: %d, want 3", got)
	}
	if v, _ := admin.HGet(ctx, "{wsgate:chat#1}:layout", "shards").Result(); v != "3" {
		t.Errorf("the mirror was not written back: %q", v)
	}
	// both there and different: no caller decides
	admin.HSet(ctx, "{wsgate:chat#1}:layout", "shards", 2)
	if _, err := s.Layout(ctx, "chat", 3); !errors.Is(err, store.ErrLayoutConflict) {
		t.Errorf("a layout and a mirror that differ: %v, want ErrLayoutConflict", err)
	}

	// a fleet run before the layout existed: state in group 0, no layout
	if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "old", Instance: "e1", Lease: time.Hour, Seq: 1,
		Counts: []store.PodCount{{Pod: "10.0.0.1:80", Live: 1}}}); err != nil {
		t.Fatal(err)
	}
	if got := layout("old", 3); got != 1 {
		t.Errorf("a fleet with state in group 0 and no layout: %d, want 1 (every pod counted in group 0)", got)
	}

	// forget-layout: frozen records nothing, next records the caller's
	admin2 := store.NewStore(admin, "wsgate")
	if err := admin2.SetLayout(ctx, "old", store.LayoutFrozen); err != nil {
		t.Fatal(err)
	}
	if got := layout("old", 3); got != store.LayoutFrozen {
		t.Errorf("a frozen layout: %d, want frozen", got)
	}
	admin.Del(ctx, "{wsgate:old}:layout") // lost while frozen: still frozen
	if got := layout("old", 3); got != store.LayoutFrozen {
		t.Errorf("a frozen layout group 0 lost: %d, want frozen", got)
	}
	if err := admin2.SetLayout(ctx, "old", store.LayoutNext); err != nil {
		t.Fatal(err)
	}
	if got := layout("old", 3); got != 3 {
		t.Errorf("after forget-layout, the next caller's 3 (despite group 0's state): %d", got)
	}
	if got, err := admin2.RecordedLayout(ctx, "old"); err != nil || got != 3 {
		t.Errorf("RecordedLayout: %d %v", got, err)
	}
}
