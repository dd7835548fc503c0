package tracker

import (
	"time"

	"github.com/wsgate/wsgate/store"
)

// redisUsable says whether admissions go through Redis: after a successful
// heartbeat (which renewed this instance's lease, told it the epoch and read
// what a previous run left), until a Redis call fails or is fenced.
func (f *fleet) redisUsable() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.redisUsableLocked()
}

// redisUsableLocked is redisUsable with f.mu held: the model's
// CAN_ADMIT_REDIS, and two more conditions. Only while the local lease
// runs: the admit script no longer reads the instance's lease in Redis (it
// refuses an instance only once reaped or gone), so an instance whose
// heartbeats stopped landing must stop asking Redis itself before a reaper
// may take its slots (PROTOCOL.md, "One read for the fence"). And the
// layout guard (shards.go), which keeps every group of a fleet out of
// Redis while Redis records another layout than this instance's shards
// (as if fenced).
func (f *fleet) redisUsableLocked() bool {
	return f.view.ok && !f.degraded && !f.fenced && f.clock != nil && f.clock().Before(f.localLeaseUntil) &&
		f.fam.layoutUsable()
}

// degrade takes in the failure err of a Redis call op: the fleet is
// degraded (admissions and releases leave Redis until a heartbeat
// succeeds; the model's deg[i]), counted, and warned of at a bounded rate.
func (t *Tracker) degrade(f *fleet, op string, err error) {
	t.metrics.RedisErrors.WithLabelValues(op).Inc()
	said := store.DescribeRedisError(err)
	now := time.Now()
	f.mu.Lock()
	was := f.degraded
	f.degraded = true
	t.setDegradedLocked(f, true) // with degraded: see sync
	// Warn on the first failure, when Redis says something else, and at
	// most every redisWarnEvery meanwhile: a long outage is seen in the
	// logs without a line per admission.
	warn := !was || said != f.redisSaid || now.Sub(f.redisWarned) >= redisWarnEvery
	f.redisSaid = said
	if warn {
		f.redisWarned = now
	}
	f.mu.Unlock()
	if warn {
		t.log.Warn("redis call failed, admitting from local state", "fleet", f.name, "op", op, "redis", said, "fallback", string(t.cfg.Fallback), "err", err)
	} else {
		t.log.Debug("redis call failed", "fleet", f.name, "op", op, "redis", said, "err", err)
	}
}

// redisWarnEvery spaces the warnings of a lasting Redis failure.
const redisWarnEvery = 30 * time.Second

// fence handles Redis' refusal to decide an admission (see store.Fence).
func (t *Tracker) fence(f *fleet, why store.Fence) {
	if why == store.FenceRecovering {
		return // the epoch is ours; it grants nothing yet
	}
	f.mu.Lock()
	was := f.fenced
	f.fenced, f.fencedBy = true, why
	if why == store.FenceLease {
		// The lease ended in Redis: an instance may have reaped this one and
		// given its slots away, so its own lease is over too, and what it
		// frees until its next heartbeat is no longer its to reuse.
		f.lowerEntToHeldLocked()
		f.localLeaseUntil = time.Time{}
	}
	f.mu.Unlock()
	if !was {
		t.log.Warn("redis refused to admit for this instance until its next heartbeat", "fleet", f.name, "why", string(why))
	}
}

// Degraded reports whether fleet (any of its groups) is currently
// admitting without Redis.
func (t *Tracker) Degraded(fleetName string) bool {
	fam, err := t.family(fleetName)
	if err != nil {
		return false
	}
	for _, f := range fam.groups {
		f.mu.Lock()
		d := f.degraded
		f.mu.Unlock()
		if d {
			return true
		}
	}
	return false
}
