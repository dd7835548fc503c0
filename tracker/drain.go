package tracker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wsgate/wsgate/store"
)

// ReasonDraining answers an admission while the instance drains (its Envoy
// is terminating). It is no rejection of the fleet: it is neither counted
// in Redis nor in the scaler's windows, and the client retries elsewhere.
const ReasonDraining store.Reason = "draining"

var errLeft = errors.New("the instance left the fleet")

// Drain makes the instance admit nothing more (ReasonDraining) and report
// not ready, so that the Service stops sending it clients. Its connections
// stay counted: it keeps heartbeating them until Leave.
func (t *Tracker) Drain() {
	if !t.draining.Swap(true) {
		t.log.Info("draining: admitting nothing more; established connections stay counted until they end", "connections", t.Live())
	}
}

// Live is the number of connections this instance holds, all fleets
// together (the ones a previous run left included).
func (t *Tracker) Live() int {
	n := 0
	for _, f := range t.allFleets() {
		f.mu.Lock()
		n += len(f.conns)
		for _, k := range f.inherited {
			n += k
		}
		f.mu.Unlock()
	}
	return n
}

// AwaitDrained waits until the instance holds no connection, gone reports
// that its Envoy is gone (nil: never), or ctx ends; it reports whether
// nothing this instance counted is carried any more.
func (t *Tracker) AwaitDrained(ctx context.Context, gone func() bool) bool {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if t.Live() == 0 || (gone != nil && gone()) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// Leave ends the instance: it heartbeats no more and removes itself from
// every fleet in Redis at once, instead of being reaped a lease later. Call
// it only when its Envoy carries none of its connections (AwaitDrained):
// the slots it counted are free for the others right away.
func (t *Tracker) Leave(ctx context.Context) error {
	t.left.Store(true)
	var errs []error
	for _, f := range t.allFleets() {
		// A heartbeat in flight finishes first: after this none runs.
		if err := f.gate.Acquire(ctx, gateAll); err != nil {
			errs = append(errs, fmt.Errorf("leave %s: waiting for its heartbeat: %w", f.name, err))
			continue
		}
		_, err := t.store.Leave(ctx, store.LeaveRequest{Fleet: f.name, Instance: t.cfg.InstanceID, Seq: f.leaveSeq()})
		f.gate.Release(gateAll)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	t.log.Info("left every fleet in Redis: this instance's slots are free", "instance", t.cfg.InstanceID)
	return nil
}

// leaveSeq numbers one more call of this instance on f: a leave, which
// gives up every slot, so the ones kept for reuse go first (a release
// queued before it is stale by its seq and would not take them out).
func (f *fleet) leaveSeq() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lowerEntToHeldLocked()
	f.seq++
	return f.seq
}
