package tracker

import "time"

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

// SetReuse turns reuse (PROTOCOL.md, "Reuse") on or off for fleet, so that
// a test of what the admit call carries can make it carry it.
func SetReuse(t *Tracker, fleet string, on bool) {
	f, err := t.fleet(fleet)
	if err != nil {
		panic(err)
	}
	f.noReuse.Store(!on)
}
