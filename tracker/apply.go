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
//
// A fleet's shards cannot change while it runs (PROTOCOL.md, "Shards"): a
// configuration that changes them is refused whole, as an invalid one is.
// Changing them is an offline step (README, "Sharded fleets").
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
	for _, fc := range c.Fleets {
		if fam, ok := old[fc.Name]; ok && len(fam.groups) != fc.Shards {
			return Change{}, fmt.Errorf("apply: fleet %s: shards %d -> %d: a running fleet's shards cannot change (each pod's count would have to move to another group); keeping the whole configuration as it was. To change them (README, \"Sharded fleets\"): drain the fleet, restart every tracker and the scaler with the new shards, then wsgate forget-layout --fleet %s",
				fc.Name, len(fam.groups), fc.Shards, fc.Name)
		}
	}
	next := make(map[string]*family, len(old)+len(c.Fleets))
	var ch Change
	for _, fc := range c.Fleets {
		fam, ok := old[fc.Name]
		if !ok {
			next[fc.Name] = t.newFamily(fc)
			ch.Added = append(ch.Added, fc.Name)
			continue
		}
		next[fc.Name] = fam
		prev := fam.conf()
		if fam.retired.Swap(false) || !reflect.DeepEqual(*prev, fc) {
			ch.Changed = append(ch.Changed, fc.Name)
		}
		fam.limiter.SetLimitAt(now, rateOf(fc))
		fam.limiter.SetBurstAt(now, fc.Burst)
		fam.cfg.Store(&fc)
		for k, f := range fam.groups {
			gc := groupConf(fc, k, len(fam.groups))
			if !slices.Equal(f.conf().Pods, gc.Pods) {
				f.podsDirty.Store(true)
			}
			f.cfg.Store(&gc)
			// A group that left Redis already heartbeats again: its next
			// heartbeat joins the fleet anew, as a retiring fleet's did
			// that came back between its leave and its end.
			f.gone.Store(false)
		}
	}
	for name, fam := range old {
		if _, ok := next[name]; ok {
			continue
		}
		next[name] = fam // until its connections have ended
		if !fam.retired.Swap(true) {
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

// leaveGroup makes a retiring fleet's group f leave Redis (leave.lua),
// under the whole gate and only if it is still retiring and empty then.
// Without the gate, Apply could configure the fleet again and an
// admission be granted between the check and the leave, which would
// erase its count in Redis while its connection stays (PROTOCOL.md,
// "Leaving"). A leave whose outcome is unknown may still run: the group
// degrades, so that nothing is granted through Redis on the count it may
// erase, until a heartbeat, a full one, re-publishes it; a leave that
// runs after that heartbeat is stale by its seq (leave.lua).
func (t *Tracker) leaveGroup(ctx context.Context, f *fleet) error {
	if err := f.gate.Acquire(ctx, gateAll); err != nil {
		return fmt.Errorf("waiting for admissions: %w", err)
	}
	defer f.gate.Release(gateAll)
	f.mu.Lock()
	still := f.fam.retired.Load() && len(f.conns) == 0 && len(f.inherited) == 0
	f.mu.Unlock()
	if !still {
		return nil // configured again, or a connection came: the caller re-checks
	}
	if _, err := t.store.Leave(ctx, store.LeaveRequest{Fleet: f.name, Instance: t.cfg.InstanceID, Seq: f.leaveSeq()}); err != nil {
		f.restate()
		t.degrade(f, "leave", err)
		return err
	}
	return nil
}

// retire ends a removed fleet's group f once its last connection has ended
// and a heartbeat published that: the instance leaves the group in Redis
// and heartbeats it no more; once every group has left, the fleet is
// forgotten. Called after every successful heartbeat of f.
func (t *Tracker) retire(ctx context.Context, f *fleet) error {
	fam := f.fam
	if !fam.retired.Load() {
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
	if err := t.leaveGroup(ctx, f); err != nil {
		return fmt.Errorf("retire fleet %s: %w", f.name, err)
	}
	t.applyMu.Lock()
	defer t.applyMu.Unlock()
	f.mu.Lock()
	empty = len(f.conns) == 0 && len(f.inherited) == 0
	retired := fam.retired.Load()
	if retired && empty {
		f.gone.Store(true) // under f.mu: Adopt clears it under f.mu
	}
	f.mu.Unlock()
	if !retired || !empty {
		// Configured again, or Envoy's access log named a connection
		// meanwhile: the next heartbeat publishes it again.
		return nil
	}
	for _, g := range fam.groups {
		g.mu.Lock()
		left := g.gone.Load() && len(g.conns) == 0 && len(g.inherited) == 0
		g.mu.Unlock()
		if !left {
			return nil // the fleet goes with its last group
		}
	}
	old := *t.fleets.Load()
	next := make(map[string]*family, len(old))
	for name, g := range old {
		if g != fam {
			next[name] = g
		}
	}
	t.fleets.Store(&next)
	t.metrics.removeFleet(fam.name)
	t.log.Info("fleet removed from the configuration: its last connection ended, this instance left it", "fleet", fam.name)
	return nil
}
