package faults

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// meter is churn (h.churn's clients) that also records when each
// admission happened and through which tracker: the failover and
// split-brain tests measure the longest stretch without a single
// admission, what a user of the fleet meets, and await admissions after a
// given moment.
type meter struct {
	h      *harness
	start  time.Time
	cancel context.CancelFunc
	wait   func()

	mu    sync.Mutex
	recs  []admission
	ended time.Time
}

// admission is one client's admission: through which tracker, when.
type admission struct {
	id string
	at time.Time
}

// startMeter runs n churning clients through the gateways of tps until
// end: each dials through a random one, holds an admitted connection for
// 50–400 ms, and closes it.
func (h *harness) startMeter(n int, seed uint64, tps func() []*trackerProc) *meter {
	ctx, cancel := context.WithCancel(context.Background())
	m := &meter{h: h, start: time.Now(), cancel: cancel}
	m.wait = h.churnSeen(ctx, n, seed, tps, m.record)
	// The test may end on a failure before end: the clients stop then.
	h.t.Cleanup(func() { m.end() })
	return m
}

func (m *meter) record(id string, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = append(m.recs, admission{id, at})
}

// end stops the clients, every connection closed, and returns when.
func (m *meter) end() time.Time {
	m.cancel()
	m.wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ended.IsZero() {
		m.ended = time.Now()
	}
	return m.ended
}

// admitted is how many admissions the clients had.
func (m *meter) admitted() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs)
}

// awaitEach waits until every tracker of tps has admitted a client after
// t0, failing the test once within has passed. It returns when the first
// admission after t0 happened (through any tracker: what a client sees)
// and when the last of tps had its first one.
func (m *meter) awaitEach(what string, tps []*trackerProc, t0 time.Time, within time.Duration) (first, all time.Time) {
	m.h.t.Helper()
	deadline := time.Now().Add(within)
	for {
		m.mu.Lock()
		firsts := map[string]time.Time{}
		first = time.Time{}
		for _, r := range m.recs {
			if !r.at.After(t0) {
				continue
			}
			if f, ok := firsts[r.id]; !ok || r.at.Before(f) {
				firsts[r.id] = r.at
			}
			if first.IsZero() || r.at.Before(first) {
				first = r.at
			}
		}
		m.mu.Unlock()
		var missing []string
		all = time.Time{}
		for _, tp := range tps {
			f, ok := firsts[tp.id]
			if !ok {
				missing = append(missing, tp.id)
			} else if f.After(all) {
				all = f
			}
		}
		if len(missing) == 0 {
			return first, all
		}
		if time.Now().After(deadline) {
			m.h.t.Fatalf("%s: no admission through %s within %s; clients saw %s", what, strings.Join(missing, ","), within, m.h.stats)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// longestGap is the longest stretch without an admission between the
// meter's start and its end (or now), and when it began.
func (m *meter) longestGap() (time.Duration, time.Time) {
	m.mu.Lock()
	at := make([]time.Time, len(m.recs))
	for i, r := range m.recs {
		at[i] = r.at
	}
	end := m.ended
	m.mu.Unlock()
	if end.IsZero() {
		end = time.Now()
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	prev := m.start
	var gap time.Duration
	var from time.Time
	for _, t := range append(at, end) {
		if d := t.Sub(prev); d > gap {
			gap, from = d, prev
		}
		prev = t
	}
	return gap, from
}

// longestGapIn is the longest stretch without an admission within
// [from, to]: one failover's, from its fault to the first admission after
// it.
func (m *meter) longestGapIn(from, to time.Time) time.Duration {
	m.mu.Lock()
	var at []time.Time
	for _, r := range m.recs {
		if r.at.After(from) && r.at.Before(to) {
			at = append(at, r.at)
		}
	}
	m.mu.Unlock()
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	prev := from
	var gap time.Duration
	for _, t := range append(at, to) {
		gap = max(gap, t.Sub(prev))
		prev = t
	}
	return gap
}

// perPod is the most each backend ever held, for the figures.
func (h *harness) perPod() string {
	var out []string
	for _, b := range h.backends {
		out = append(out, fmt.Sprint(b.Max.Load()))
	}
	return strings.Join(out, ",")
}
