package store

import (
	"math/rand/v2"
	"time"
)

// Stalled is a reaper's own witness (PROTOCOL.md, "Leases and clocks"): it
// watches each instance's seq on the reaper's monotonic clock, and names
// the instances whose seq stood still for a full lease. Redis reaps only
// those of them whose lease has also ended by its own clock, so that a clock
// step on one host reaps nobody. Not safe for concurrent use.
type Stalled struct {
	ttl  time.Duration
	seen map[string]stallSeen
}

type stallSeen struct {
	seq   uint64
	since time.Time
}

// NewStalled returns a watch that names an instance after ttl unchanged.
func NewStalled(ttl time.Duration) *Stalled {
	return &Stalled{ttl: ttl, seen: map[string]stallSeen{}}
}

// Observe records the instances' seqs as read at now and returns those,
// other than self, whose seq has not changed for the whole ttl. An instance
// seen for the first time starts its watch now.
func (w *Stalled) Observe(seqs map[string]uint64, self string, now time.Time) []string {
	var out []string
	for id, seq := range seqs {
		s, ok := w.seen[id]
		if !ok || s.seq != seq {
			w.seen[id] = stallSeen{seq: seq, since: now}
			continue
		}
		if id != self && now.Sub(s.since) >= w.ttl {
			out = append(out, id)
		}
	}
	for id := range w.seen {
		if _, ok := seqs[id]; !ok {
			delete(w.seen, id)
		}
	}
	return out
}

// Watchers is about how many of a fleet's instances read the instances'
// seqs per heartbeat period, once it has more than that (see Due).
const Watchers = 8

// Due says whether the watcher's next heartbeat should read the instances'
// seqs (SyncRequest.WatchInstances) for this watch. Every instance watches
// every other, and one witness of a stalled instance is enough: Redis then
// checks its lease by its own clock. So with n instances at the last read,
// each reads with probability Watchers/n: about Watchers reads a period in
// the whole fleet instead of n, each of n instances, and Redis' cost of
// watching grows with n rather than n². Always before a first read and in
// fleets of at most Watchers instances. The price is time: a stalled
// instance is named once one of the instances that read its last seq reads
// again a ttl later, a few periods past the ttl where all read each period.
func (w *Stalled) Due() bool {
	n := len(w.seen)
	return n <= Watchers || rand.IntN(n) < Watchers
}
