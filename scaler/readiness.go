package scaler

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// readiness decides whether a fleet's counts are complete enough to act on.
// After Redis lost its data (a new epoch) the counts come back one tracker
// heartbeat at a time; until enough trackers re-synced, live connections
// are undercounted and any number derived from them would scale down.
type readiness struct {
	settle   time.Duration
	ratio    float64
	expected int64 // --expected-instances; 0 = learn
	// counter, when set, counts the Envoy (tracker) instances Kubernetes
	// says are ready: the expectation when --expected-instances is unset.
	counter InstanceCounter
	// lapse is how long after an epoch began a remembered expectation
	// holds: instances that died with Redis never sync again.
	lapse time.Duration

	mu     sync.Mutex
	fleets map[string]*epochMemory
}

type epochMemory struct {
	epoch string
	// alive is the number of live instances last seen in epoch.
	alive int64
	// dropped is when alive was first seen falling below the readiness
	// ratio of it (zero: no such drop pending).
	dropped time.Time
	// expected is alive of the previous epoch, remembered at the change.
	expected int64
	// began is when the epoch began, on this scaler's clock.
	began time.Time
	// left is the fleet's count of instances that left on their own, as
	// last seen.
	left int64
}

// vanished says whether s lost more live instances than a rolling update
// does (one at a time, or the ratio's share of a large fleet), and more than
// Kubernetes says are gone (the Envoy Service's ready endpoints).
func (r *readiness) vanished(s store.Summary, before int64) bool {
	if before == 0 {
		return false
	}
	allowed := max(1, int64(math.Floor((1-r.ratio)*float64(before)+1e-9)))
	if s.Alive >= before-allowed && s.Alive > 0 { // every instance gone is never a rolling update
		return false
	}
	if r.counter != nil {
		if want := int64(r.counter.ExpectedInstances(fleetOf(s.Fleet))); want > 0 && s.Alive >= int64(math.Ceil(r.ratio*float64(want)-1e-9)) {
			return false
		}
	}
	return true
}

// InstanceCounter tells how many tracker instances a fleet should have (the
// ready endpoints of its Envoy Service); 0 means unknown.
type InstanceCounter interface {
	ExpectedInstances(fleet string) int
}

func newReadiness(settle time.Duration, ratio float64, expected int64) *readiness {
	return &readiness{settle: settle, ratio: ratio, expected: expected, lapse: max(5*settle, 5*time.Minute), fleets: map[string]*epochMemory{}}
}

// fleetOf is the fleet a group belongs to: readiness judges each group of
// a sharded fleet on its own (its own epoch and syncs), and every tracker
// of the fleet heartbeats every group, so each group expects the fleet's
// Envoy instances.
func fleetOf(group string) string {
	f, _, _ := fleets.SplitGroup(group)
	return f
}

// check returns nil when s, the summary of one group (of an unsharded
// fleet: the fleet), can be acted on, or why not.
func (r *readiness) check(s store.Summary, now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.fleets[s.Fleet]
	if m == nil {
		m = &epochMemory{epoch: s.Epoch}
		r.fleets[s.Fleet] = m
	}
	if s.Epoch == "" {
		return fmt.Errorf("no epoch: no tracker has synced fleet %s since Redis started", s.Fleet)
	}
	if s.Epoch != m.epoch {
		if m.epoch != "" {
			m.expected = m.alive
		}
		m.epoch, m.alive, m.began, m.left = s.Epoch, 0, time.Time{}, s.Left
	}
	if m.began.IsZero() {
		m.began = s.EpochStart()
		if !s.RedisNow.IsZero() && !m.began.IsZero() {
			// The epoch's id holds its start by Redis' clock: the age is read
			// there, once, and goes on by this clock; no two hosts' clocks
			// are compared.
			// Both are whole milliseconds, floored: the age may read up
			// to 1ms long, and the settle time is a lower bound.
			m.began = now.Add(-s.RedisNow.Sub(m.began) + time.Millisecond)
		}
	}
	age := now.Sub(m.began)
	if s.EpochStart().IsZero() || age < r.settle {
		return fmt.Errorf("epoch %s is %s old, settle time is %s", s.Epoch, age.Round(time.Millisecond), r.settle)
	}
	want, from := r.expected, "--expected-instances"
	if want == 0 && r.counter != nil {
		want, from = int64(r.counter.ExpectedInstances(fleetOf(s.Fleet))), "ready endpoints of the Envoy Service"
	}
	if want == 0 && m.expected > 0 && age < r.lapse {
		want, from = m.expected, "alive before the epoch changed"
	}
	need := int64(math.Ceil(r.ratio*float64(want) - 1e-9))
	if s.Synced < need {
		return fmt.Errorf("%d of %d expected tracker instances (%s) synced in epoch %s, need %d", s.Synced, want, from, s.Epoch, need)
	}
	// The live count is what the instances' heartbeats published: one that
	// heartbeats in the epoch without publishing (a tracker of a version
	// before that, in a rolling upgrade) is missing from it, and the count
	// would err low. (One alive that has not heartbeated in a new epoch yet
	// is the synced check's, against the instances expected.)
	if synced := int64(math.Ceil(r.ratio*float64(min(s.Synced, s.Alive)) - 1e-9)); s.Published < max(need, synced) {
		return fmt.Errorf("%d of %d tracker instances synced in epoch %s published their connections, need %d: trackers of a version before 2026-12 publish none (upgrade them)",
			s.Published, min(s.Synced, s.Alive), s.Epoch, max(need, synced))
	}
	// Instances vanishing within an epoch were reaped: dead, or only cut off
	// from Redis with their connections still up. Their counts are gone
	// either way, so hold until the lower number has lasted the settle time
	// (an Envoy scale-in then gets through).
	// Instances that left on their own (drained) took no count with them.
	if r.vanished(s, max(0, m.alive-max(0, s.Left-m.left))) {
		if m.dropped.IsZero() {
			m.dropped = now
		}
		if since := now.Sub(m.dropped); since < r.settle {
			return fmt.Errorf("live tracker instances dropped from %d to %d %s ago (reaped: dead or cut off from Redis); settle time is %s",
				m.alive, s.Alive, since.Round(time.Millisecond), r.settle)
		}
	}
	m.dropped = time.Time{}
	m.alive, m.left = s.Alive, s.Left
	return nil
}
