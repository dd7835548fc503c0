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
