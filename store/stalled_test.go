package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/wsgate/wsgate/store"
)

// A watcher reads the instances at every heartbeat until it has seen more
// than store.Watchers of them; then with probability Watchers/n, so that
// the fleet as a whole reads about Watchers times a period.
func TestStalledDueSharesTheWatch(t *testing.T) {
	w := store.NewStalled(time.Minute)
	now := time.Unix(1_800_000_000, 0)
	for range 100 {
		if !w.Due() {
			t.Fatal("Due before any read: false; want true")
		}
	}
	seqs := map[string]uint64{}
	for i := range store.Watchers {
		seqs[fmt.Sprint("e", i)] = 1
	}
	w.Observe(seqs, "e0", now)
	for range 100 {
		if !w.Due() {
			t.Fatalf("Due with %d instances: false; want true", len(seqs))
		}
	}
	for i := range 1000 {
		seqs[fmt.Sprint("e", i)] = 1
	}
	w.Observe(seqs, "e0", now)
	const draws = 20000
	due := 0
	for range draws {
		if w.Due() {
			due++
		}
	}
	// expected draws*8/1000 = 160 (sd about 13)
	if due < 80 || due > 260 {
		t.Errorf("Due with 1000 instances: %d of %d; want about %d", due, draws, draws*store.Watchers/1000)
	}
}
