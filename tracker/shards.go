package tracker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/wsgate/wsgate/store"
)

// This file is what crosses the groups of a fleet with shards (PROTOCOL.md,
// "Shards"): the choice of a group for an admission, and the layout guard.
// Everything else (an admission in a group, its fallback, releases,
// heartbeats, recovery) is per group, the protocol of an unsharded fleet.

// admitShards decides an admission of a fleet with more than one group,
// after its rate limit: a spare slot of any group first (reuse), then
// groups in the order groupOrder gives, until one admits. A group that
// Redis refuses (capacity, no_pods) or whose fallback refuses hands on to
// the next; at most one call per group. The refusal, if every group
// refuses, is the one refusalRank puts first.
func (t *Tracker) admitShards(ctx context.Context, fam *family, now time.Time) (Result, error) {
	n := len(fam.groups)
	off := rand.IntN(n)
	for i := range n {
		if res, ok := t.reuse(fam.groups[(off+i)%n], now); ok {
			return res, nil
		}
	}
	var refused Result
	var refusedBy *fleet
	for _, f := range t.groupOrder(fam) {
		res, err := t.admitGroup(ctx, f, now, false)
		if err != nil {
			return res, err
		}
		if res.Admitted {
			return res, nil
		}
		if refusedBy == nil || refusalRank(res.Reason) > refusalRank(refused.Reason) {
			refused, refusedBy = res, f
		}
	}
	if refusedBy == nil { // groupOrder never returns none; in case
		refused, refusedBy = Result{Reason: store.ReasonRedisDown, RetryAfter: time.Second, Fallback: true}, fam.groups[0]
	}
	if refused.Fallback {
		// The admit script records the refusals Redis decided, the
		// fallback's are recorded here: once per admission, not per
		// group it tried.
		refusedBy.reject(refused.Reason, now)
	}
	refused.Fleet = fam.name
	return refused, nil
}

// refusalRank orders the refusals of a fleet's groups: the one an
// admission that every group refused reports is the highest. A group
// Redis could not decide for says more than a full one (it may have had
// room: redis_down, recovering), and a full one more than one without
// pods (a group may have none while the others are full).
func refusalRank(r store.Reason) int {
	switch r {
	case store.ReasonRedisDown:
		return 4
	case store.ReasonRecovering:
		return 3
	case store.ReasonCapacity:
		return 2
	case store.ReasonNoPods:
		return 1
	}
	return 0
}

// groupOrder is the order in which an admission tries fam's groups: of the
// groups whose last heartbeat saw a free placeable slot, two at random, the
// one with more free slots first (the power of two choices: the groups
// fill evenly without every tracker herding onto the same one), then the
// others by free slots; then the groups no heartbeat has reached yet
// (their fallback decides, without Redis). A group whose view shows no
// free slot is skipped, and so is one whose fallback has none, unless no
// group has one: then one group Redis decides for, at random, so that
// Redis, not a view a heartbeat old, refuses the admission (or, if Redis
// decides for none, one group's fallback). Never an empty order.
func (t *Tracker) groupOrder(fam *family) []*fleet {
	type cand struct {
		f    *fleet
		free int
	}
	var open, full, unknown []cand
	for _, f := range fam.groups {
		free, known, usable := t.freeSlots(f)
		switch {
		case !known:
			unknown = append(unknown, cand{f, 0})
		case free > 0:
			open = append(open, cand{f, free})
		case usable:
			full = append(full, cand{f, free})
		}
	}
	out := make([]*fleet, 0, len(fam.groups))
	switch {
	case len(open) >= 2:
		i := rand.IntN(len(open))
		j := rand.IntN(len(open) - 1)
		if j >= i {
			j++
		}
		if open[j].free > open[i].free {
			i, j = j, i
		}
		first, second := open[i], open[j]
		rest := make([]cand, 0, len(open)-2)
		for k, c := range open {
			if k != i && k != j {
				rest = append(rest, c)
			}
		}
		sort.SliceStable(rest, func(a, b int) bool { return rest[a].free > rest[b].free })
		out = append(out, first.f, second.f)
		for _, c := range rest {
			out = append(out, c.f)
		}
	case len(open) == 1:
		out = append(out, open[0].f)
	case len(full) > 0:
		out = append(out, full[rand.IntN(len(full))].f)
	case len(unknown) == 0:
		// No group has a slot nor Redis to ask: one group's fallback
		// refuses, with its reason (redis_down, recovering).
		out = append(out, fam.groups[rand.IntN(len(fam.groups))])
	}
	for _, c := range unknown {
		out = append(out, c.f)
	}
	return out
}

// freeSlots estimates the free slots of group f for the choice of a
// group: through Redis, what its last heartbeat saw (the sum over its
// placeable pods of cap - load) less what this instance admitted since
// (and plus what it released); others' admissions since are not in it: it
// only orders the groups, Redis decides. While Redis is not usable for the
// group, what its fallback could admit: under share the slots it holds
// and does not use (ent - held), under closed none. known is false before
// a heartbeat succeeded; usable says whether Redis decides for the group.
func (t *Tracker) freeSlots(f *fleet) (free int, known, usable bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.view.ok {
		return 0, false, false
	}
	if !f.fam.layoutUsable() {
		return 0, true, false // the fallback is closed (admitFallback)
	}
	if !f.redisUsableLocked() {
		switch t.cfg.Fallback {
		case FallbackShare:
			for pod, n := range f.ent {
				free += max(0, n-f.heldLocked(pod))
			}
			return free, true, false
		case FallbackClosed:
			return 0, true, false
		}
	}
	// What it holds now less what the heartbeat published (mineTotal,
	// which counts the inherited slots too): admitted since, less released.
	held := len(f.conns)
	for _, n := range f.inherited {
		held += n
	}
	return f.view.free - (held - f.view.mineTotal), true, true
}

// checkLayout is the layout guard (PROTOCOL.md, "Shards"): it records this
// instance's shards for fam in Redis unless a layout is recorded already
// (store.Store.Layout: group 0's and its mirror's), and lets fam's groups
// use Redis only while the recorded layout is this instance's. Run before
// each heartbeat of group 0, so before a fleet's first. When Redis cannot
// be asked, the last finding stands (none: the groups stay out of Redis,
// wsgate_tracker_layout_unknown) and the failure is logged as an error, at
// most every redisWarnEvery: a guard that never answers keeps the fleet
// from admitting at all.
func (t *Tracker) checkLayout(ctx context.Context, fam *family) error {
	ctx, cancel := context.WithTimeout(ctx, max(t.cfg.RedisTimeout, t.cfg.Heartbeat/4))
	defer cancel()
	n := len(fam.groups)
	recorded, err := t.store.Layout(ctx, fam.name, n)
	conflict := errors.Is(err, store.ErrLayoutConflict)
	if err != nil && !conflict {
		t.metrics.RedisErrors.WithLabelValues("sync").Inc()
		err = fmt.Errorf("layout %s: %w", fam.name, err)
		t.layoutFailed(fam, err)
		return err
	}
	state := layoutOK
	if recorded != n || conflict {
		state = layoutMismatch
	}
	fam.mu.Lock()
	changed := fam.recorded != recorded
	fam.recorded = recorded
	said := ""
	if conflict {
		said = err.Error()
	}
	changed = changed || fam.layoutErr != said
	fam.layoutErr = said
	was := fam.layout.Swap(state)
	t.publishDegradedLocked(fam)
	fam.mu.Unlock()
	t.metrics.LayoutMismatch.WithLabelValues(fam.name).Set(bit(state == layoutMismatch))
	t.metrics.LayoutUnknown.WithLabelValues(fam.name).Set(0)
	switch {
	case conflict && (was != layoutMismatch || changed):
		t.log.Error("the fleet's recorded layout and its mirror differ: none of its groups uses Redis, and its fallback admits nothing, until they agree",
			"fleet", fam.name, "shards", n, "err", err,
			"what_to_do", "drain the fleet, then `wsgate forget-layout --fleet "+fam.name+"` (README, \"Sharded fleets\")")
	case recorded == store.LayoutFrozen && (was != layoutMismatch || changed):
		t.log.Warn("the fleet's layout is frozen (wsgate forget-layout is changing it): none of its groups uses Redis, and its fallback admits nothing, until a layout is recorded",
			"fleet", fam.name, "shards", n)
	case state == layoutMismatch && (was != layoutMismatch || changed):
		t.log.Error("the fleet's shards differ from the layout Redis recorded: none of its groups admits or releases through Redis, and its fallback admits nothing, until they agree",
			"fleet", fam.name, "shards", n, "redis_layout", recorded,
			"what_to_do", "run every tracker and the scaler with the recorded shards; to change a fleet's shards (README, \"Sharded fleets\"): drain the fleet, restart every tracker and the scaler with the new shards, then `wsgate forget-layout --fleet "+fam.name+"`")
	case state == layoutOK && was != layoutOK:
		t.log.Info("the fleet's shards agree with the layout Redis recorded: its groups use Redis", "fleet", fam.name, "shards", n)
	}
	return nil
}

// layoutFailed takes in a layout check that could not reach Redis (err):
// the last finding stands; it is kept for /status and logged as an error
// on the first failure, when it says something else, and at most every
// redisWarnEvery meanwhile.
func (t *Tracker) layoutFailed(fam *family, err error) {
	said := store.DescribeRedisError(err)
	now := time.Now()
	fam.mu.Lock()
	warn := fam.layoutErr != said || now.Sub(fam.layoutWarned) >= redisWarnEvery
	fam.layoutErr = said
	if warn {
		fam.layoutWarned = now
	}
	state := fam.layout.Load()
	t.publishDegradedLocked(fam)
	fam.mu.Unlock()
	if !warn {
		t.log.Debug("layout check failed", "fleet", fam.name, "err", err)
		return
	}
	if state == layoutUnknown {
		t.log.Error("cannot read the fleet's layout in Redis: none of its groups uses Redis, and its fallback admits nothing, until a check succeeds",
			"fleet", fam.name, "redis", said, "err", err,
			"what_to_do", "check that group 0's Redis is up and that the tracker's ACL user may run EVAL/EVALSHA and HGET on the fleet's keys (README, \"Operations\")")
		return
	}
	t.log.Error("cannot read the fleet's layout in Redis: the last finding stands", "fleet", fam.name, "redis", said, "err", err)
}

// LayoutMismatch reports the layout Redis recorded for fleet, and whether
// it differs from this instance's shards (the layout guard refuses Redis).
// recorded is 0 before the guard could ask Redis.
func (t *Tracker) LayoutMismatch(fleetName string) (recorded int, mismatch bool, err error) {
	fam, err := t.family(fleetName)
	if err != nil {
		return 0, false, err
	}
	fam.mu.Lock()
	defer fam.mu.Unlock()
	return fam.recorded, fam.layout.Load() == layoutMismatch, nil
}
