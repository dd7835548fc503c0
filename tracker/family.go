package tracker

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// family is one configured fleet on this instance: its groups (one unless
// it has shards; PROTOCOL.md, "Shards"), each a fleet of its own to Redis
// and to the protocol, and what is the fleet's as a whole: its
// configuration, its token bucket (the rate limit is per fleet and
// instance, not per group), its admission counters and the layout guard.
//
// A family's fields are atomics, immutable after newFamily, or guarded by
// mu, a leaf lock: it is taken under a group's f.mu and nothing is taken
// under it.
type family struct {
	name string
	// cfg is the fleet's whole configuration, replaced by Apply.
	cfg atomic.Pointer[fleets.Fleet]
	// retired: the fleet left the configuration; it admits nothing and
	// stays until the connections of every group have ended (Apply).
	retired  atomic.Bool
	limiter  *rate.Limiter
	groups   []*fleet // group k at k; never changed
	admitted prometheus.Counter
	rejected map[store.Reason]prometheus.Counter
	// hints counts the admit calls' guesses by outcome: taken, refused.
	hintsTaken, hintsRefused prometheus.Counter

	// layout is what the layout guard found (layoutUnknown until group
	// 0's Redis answered it once): only layoutOK lets the groups use Redis.
	layout atomic.Int32

	mu sync.Mutex // guards below
	// degraded counts the groups whose fallback is active: the fleet's
	// wsgate_tracker_fallback_active is 1 while any is.
	degraded int
	// recorded is the layout Redis recorded at the last check (0 before,
	// store.LayoutFrozen while frozen).
	recorded int
	// layoutErr is the last layout check's failure, "" once one succeeds;
	// layoutWarned when it was last logged (at most every redisWarnEvery).
	layoutErr    string
	layoutWarned time.Time
}

// The layout guard's findings (family.layout).
const (
	layoutUnknown int32 = iota
	layoutOK
	layoutMismatch
)

func (fam *family) conf() *fleets.Fleet { return fam.cfg.Load() }

// layoutUsable says whether the fleet's groups may admit and release
// through Redis as far as the layout guard knows: Redis recorded this
// instance's shards. While it is false the fallback admits nothing either
// (it is closed, whatever --fallback says: PROTOCOL.md, "Shards").
func (fam *family) layoutUsable() bool { return fam.layout.Load() == layoutOK }

// setDegradedLocked records whether group f counts in the fleet's
// wsgate_tracker_fallback_active, and sets it: 1 while any group does.
// Called with f.mu held, so that no scrape sees the fallback active beside
// a fleet that grants.
func (t *Tracker) setDegradedLocked(f *fleet, on bool) {
	if f.inGauge == on {
		return
	}
	f.inGauge = on
	fam := f.fam
	fam.mu.Lock()
	defer fam.mu.Unlock()
	if on {
		fam.degraded++
	} else {
		fam.degraded--
	}
	t.publishDegradedLocked(fam)
}

// publishDegradedLocked sets fam's wsgate_tracker_fallback_active: 1
// while any group's fallback is active, or while the layout guard keeps
// the fleet out of Redis (only a fallback, a closed one, decides then).
// With fam.mu held.
func (t *Tracker) publishDegradedLocked(fam *family) {
	t.metrics.Degraded.WithLabelValues(fam.name).Set(bit(fam.degraded > 0 || !fam.layoutUsable()))
}
