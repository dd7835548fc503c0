package tracker

import (
	"context"
	"fmt"
	"reflect"
	"slices"

	"golang.org/x/time/rate"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// Change says what Apply changed, fleet by fleet.
type Change struct {
	Added, Changed, Removed []string
}

// Empty reports whether nothing changed.
func (c Change) Empty() bool { return len(c.Added)+len(c.Changed)+len(c.Removed) == 0 }

// Apply makes fleets the configuration, without a restart and without
// cutting a connection (README, Operations):
//
//   - A changed fleet takes its new cap, rate, burst, policy and
//     retryAfter at once. The cap travels with every admission to Redis, so
//     lowering it below a pod's live count cuts nothing: admissions wait
//     until the pod is under it. Static pods are written to Redis by the
//     next heartbeat.
//   - An added fleet is served after its first heartbeat (asked for now).
//   - A removed fleet admits nothing more; it keeps heartbeating the
//     connections it holds, so they stay counted, and leaves Redis once the
//     last of them has ended.
//
// The new configuration is validated whole first; if it is invalid nothing
// changes. A removed fleet that comes back before it left is served again
// with its connections.
func (t *Tracker) Apply(configs []fleets.Fleet) (Change, error) {
	c := t.cfg
	c.Fleets = slices.Clone(configs)
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return Change{}, fmt.Errorf("apply: %w", err)
	}
	t.applyMu.Lock()
	defer t.applyMu.Unlock()
	now := t.now()
	old := *t.fleets.Load()
	next := make(map[string]*fleet, len(old)+len(c.Fleets))
	var ch Change
	for _, fc := range c.Fleets {
		f, ok := old[fc.Name]
		if !ok {
			next[fc.Name] = t.newFleet(fc)
			ch.Added = append(ch.Added, fc.Name)
			continue
		}
		next[fc.Name] = f
		prev := f.conf()
		if f.retired.Swap(false) || !reflect.DeepEqual(*prev, fc) {
			ch.Changed = append(ch.Changed, fc.Name)
		}
		f.limiter.SetLimitAt(now, rateOf(fc))
		f.limiter.SetBurstAt(now, fc.Burst)
		if !slices.Equal(prev.Pods, fc.Pods) {
			f.podsDirty.Store(true)
		}
		f.cfg.Store(&fc)
	}
	for name, f := range old {
		if _, ok := next[name]; ok {
			continue
		}
		next[name] = f // until its connections have ended
		if !f.retired.Swap(true) {
			ch.Removed = append(ch.Removed, name)
		}
	}
	t.fleets.Store(&next)
	slices.Sort(ch.Added)
	slices.Sort(ch.Changed)
	slices.Sort(ch.Removed)
	if !ch.Empty() {
		select { // a heartbeat now: added fleets start, static pods go out
		case t.kick <- struct{}{}:
		default:
		}
	}
	return ch, nil
}

func rateOf(fc fleets.Fleet) rate.Limit { return rate.Limit(fc.RatePerSecond) }

// retire ends a removed fleet once its last connection has ended and a
// heartbeat published that: the instance leaves the fleet in Redis and the
// fleet is forgotten. Called after every successful heartbeat of f.
func (t *Tracker) retire(ctx context.Context, f *fleet) error {
	if !f.retired.Load() {
		return nil
	}
	f.mu.Lock()
	empty := len(f.conns) == 0 && len(f.inherited) == 0
	f.mu.Unlock()
	if !empty {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 4*t.cfg.RedisTimeout)
	defer cancel()
	if _, err := t.store.Leave(ctx, store.LeaveRequest{Fleet: f.name, Instance: t.cfg.InstanceID, Seq: f.leaveSeq()}); err != nil {
		return fmt.Errorf("retire fleet %s: %w", f.name, err)
	}
	t.applyMu.Lock()
	defer t.applyMu.Unlock()
	f.mu.Lock()
	empty = len(f.conns) == 0 && len(f.inherited) == 0
	f.mu.Unlock()
	if !f.retired.Load() || !empty {
		// Configured again, or Envoy's access log named a connection
		// meanwhile: the next heartbeat publishes it again.
		return nil
	}
	old := *t.fleets.Load()
	next := make(map[string]*fleet, len(old))
	for name, g := range old {
		if g != f {
			next[name] = g
		}
	}
	t.fleets.Store(&next)
	t.metrics.removeFleet(f.name)
	t.log.Info("fleet removed from the configuration: its last connection ended, this instance left it", "fleet", f.name)
	return nil
}
