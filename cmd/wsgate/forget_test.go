package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
)

// forget-instance frees a stopped instance's slots, and Redis refuses it
// for one whose lease still holds.
func TestForgetInstanceOnlyAfterTheLease(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s := store.NewStore(srv.Client(), "wsgate")
	sync := func(id string, lease time.Duration) {
		t.Helper()
		if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: id, Lease: lease,
			Counts: []store.PodCount{{Pod: "10.0.0.1:80", Live: 2}}}); err != nil {
			t.Fatal(err)
		}
	}
	sync("alive", time.Hour)
	sync("gone", time.Millisecond)
	// Wait for Redis' clock to pass gone's lease; it has no event to await.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		snap, err := s.Snapshot(ctx, "chat", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if snap.Instances[0].ID == "alive" && snap.Instances[1].LeaseUntil.Before(snap.RedisNow) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis' clock did not pass a 1ms lease in 10s")
		}
	}
	run := func(args ...string) error {
		return runForget(append([]string{"--redis-addr", srv.Addr()}, args...))
	}
	err := run("--fleet", "chat", "alive")
	if err == nil || !strings.Contains(err.Error(), "still holds a lease, until ") || !strings.Contains(err.Error(), "retry after that") {
		t.Errorf("forgetting a live instance: %v, want refused, saying until when", err)
	} else {
		// The lease's end, as Redis has it: about an hour ahead.
		at := strings.Fields(strings.SplitN(err.Error(), "until ", 2)[1])[0]
		until, perr := time.Parse(time.RFC3339, at)
		if perr != nil || until.Before(time.Now().Add(59*time.Minute)) || until.After(time.Now().Add(61*time.Minute)) {
			t.Errorf("forgetting a live instance: %v: the lease's end %q (%v), want about an hour from now", err, at, perr)
		}
	}
	if err := run("--fleet", "chat", "nobody"); err == nil || !strings.Contains(err.Error(), `no instance "nobody"`) {
		t.Errorf("forgetting an unknown instance: %v", err)
	}
	if err := run("--fleet", "nope", "alive"); err == nil || !strings.Contains(err.Error(), `fleet "nope" is unknown: Redis holds no state under {wsgate:nope}: (fleets found: chat)`) {
		t.Errorf("forgetting an instance of an unknown fleet: %v, want the fleet named unknown", err)
	}
	if err := run("chat"); err == nil {
		t.Error("accepted a call without --fleet")
	}
	if err := run("--fleet", "chat", "gone"); err != nil {
		t.Fatalf("forgetting an expired instance: %v", err)
	}
	sum, err := s.Summary(ctx, "chat", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Live != 2 {
		t.Errorf("live after forgetting gone = %d, want alive's 2", sum.Live)
	}
}

// forget-layout deletes a drained fleet's recorded layout, so that the
// next tracker records its shards; refused while a group counts a
// connection, or when none is recorded.
func TestForgetLayoutOnlyWhenDrained(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s := store.NewStore(srv.Client(), "wsgate")
	run := func() error {
		return runForgetLayout([]string{"--redis-addr", srv.Addr(), "--fleet", "chat", "--settle", "0s"})
	}
	if err := run(); err == nil || !strings.Contains(err.Error(), "no recorded layout") {
		t.Errorf("forgetting an unrecorded layout: %v", err)
	}
	if n, err := s.Layout(ctx, "chat", 3); err != nil || n != 3 {
		t.Fatalf("recording a layout of 3: %d %v", n, err)
	}
	if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat#2", Instance: "e1", Lease: time.Hour,
		Counts: []store.PodCount{{Pod: "10.0.0.1:80", Live: 2}}}); err != nil {
		t.Fatal(err)
	}
	if err := run(); err == nil || !strings.Contains(err.Error(), "chat#2: 2") || !strings.Contains(err.Error(), "drain the fleet first") {
		t.Errorf("forgetting the layout of a fleet that counts connections: %v", err)
	}
	if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat#2", Instance: "e1", Lease: time.Hour, Seq: 2}); err != nil {
		t.Fatal(err)
	}
	if err := run(); err != nil {
		t.Fatalf("forgetting a drained fleet's layout: %v", err)
	}
	if n, err := s.Layout(ctx, "chat", 1); err != nil || n != 1 {
		t.Errorf("after forget-layout, the next layout recorded: %d %v; want 1", n, err)
	}
}

// forget-layout freezes the layout before it checks the drain a second
// time: a connection counted between the first check and the freeze (a
// tracker that had not seen the freeze yet) makes it refuse, and the
// recorded layout is put back, not left frozen nor forgotten.
func TestForgetLayoutChecksTheDrainAgainAfterTheFreeze(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s := store.NewStore(srv.Client(), "wsgate")
	if n, err := s.Layout(ctx, "chat", 3); err != nil || n != 3 {
		t.Fatalf("recording a layout of 3: %d %v", n, err)
	}
	done := make(chan error, 1)
	go func() {
		done <- runForgetLayout([]string{"--redis-addr", srv.Addr(), "--fleet", "chat", "--settle", "4s"})
	}()
	await.True(t, "the layout frozen", 10*time.Second, func() bool {
		n, err := s.RecordedLayout(ctx, "chat")
		return err == nil && n == store.LayoutFrozen
	})
	if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat#1", Instance: "e1", Lease: time.Hour, Seq: 1,
		Counts: []store.PodCount{{Pod: "10.0.0.1:80", Live: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "chat#1: 1") {
		t.Errorf("forget-layout with a connection counted during the freeze: %v", err)
	}
	if n, err := s.RecordedLayout(ctx, "chat"); err != nil || n != 3 {
		t.Errorf("after the refusal, the recorded layout: %d %v; want 3 back", n, err)
	}
}

// forget-layout's drain check reads Redis' own counts of the pods, which
// an admission moves at once, not the scaler's live count, which only the
// next heartbeat carries: a connection admitted since the last heartbeat
// keeps the layout.
func TestForgetLayoutSeesAnAdmissionBeforeItsHeartbeat(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s := store.NewStore(srv.Client(), "wsgate")
	if n, err := s.Layout(ctx, "chat", 2); err != nil || n != 2 {
		t.Fatalf("recording a layout of 2: %d %v", n, err)
	}
	storetest.SetPods(t, s, "chat#1", storetest.Pods("10.0.0.1:80"))
	if a := storetest.Admit(t, s, "chat#1", 2, fleets.PolicyPack, "e1", time.Now()); a.Pod == "" {
		t.Fatalf("admission refused: %+v", a)
	}
	if sum, err := s.Summary(ctx, "chat#1", time.Now()); err != nil || sum.Live != 0 {
		t.Fatalf("the summary counts %d (%v) before a heartbeat; the test needs 0", sum.Live, err)
	}
	err := runForgetLayout([]string{"--redis-addr", srv.Addr(), "--fleet", "chat", "--settle", "0s"})
	if err == nil || !strings.Contains(err.Error(), "chat#1: 1") {
		t.Errorf("forgetting the layout of a group with an admitted connection: %v", err)
	}
}
