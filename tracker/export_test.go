package tracker

import (
	"context"
	"fmt"
	"time"
)

// SetReleaseLinger makes fleet's releases wait d for an admit call to
// carry them, so that a test decides which call does.
func SetReleaseLinger(t *Tracker, fleet string, d time.Duration) {
	f, err := t.fleet(fleet)
	if err != nil {
		panic(err)
	}
	f.releases.mu.Lock()
	f.releases.linger = d
	f.releases.mu.Unlock()
}

// SetReuse turns reuse (PROTOCOL.md, "Reuse") on or off for fleet (every
// group of it), so that a test of what the admit call carries can make it
// carry it.
func SetReuse(t *Tracker, fleet string, on bool) {
	fam, err := t.family(fleet)
	if err != nil {
		panic(err)
	}
	for _, f := range fam.groups {
		f.mu.Lock()
		f.noReuse = !on
		f.mu.Unlock()
	}
}

// AwaitQueuedAdmissions returns once n admissions of fleet wait in its
// batcher's queue behind a call in flight, or panics after a minute. The
// queue has no event to wait for: it is polled.
func AwaitQueuedAdmissions(t *Tracker, fleet string, n int) {
	f, err := t.fleet(fleet)
	if err != nil {
		panic(err)
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Microsecond) {
		f.admits.mu.Lock()
		got := len(f.admits.queue)
		f.admits.mu.Unlock()
		if got == n {
			return
		}
	}
	panic(fmt.Sprintf("fleet %s: %d admissions never queued", fleet, n))
}

// Retire runs the check a removed fleet gets after each heartbeat: once
// it holds nothing, the instance leaves it in Redis.
func Retire(t *Tracker, fleet string) error {
	f, err := t.fleet(fleet)
	if err != nil {
		return err
	}
	return t.retire(context.Background(), f)
}

// CheckNewEpochs runs what WatchReplication runs every heartbeat.
func CheckNewEpochs(t *Tracker) { t.checkNewEpochs(context.Background()) }

// PublishReplication takes in a replication check's findings per group
// (1 safe, 0 not), as checkReplication does.
func PublishReplication(t *Tracker, found map[string]float64) { t.publishReplication(found) }
