package tracker

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/wsgate/wsgate/store"
)

// Status is what GET /status answers: the instance and, per fleet, whether
// Redis grants its admissions and if not why. /readyz stays a yes or no
// for Kubernetes (README, Operations: "Health"); this is for operators.
type Status struct {
	Instance string `json:"instance"`
	// Draining: the instance admits nothing more (its Envoy is stopping).
	Draining bool `json:"draining"`
	// Ready and NotReady are /readyz's answer.
	Ready    bool          `json:"ready"`
	NotReady string        `json:"notReady,omitempty"`
	Fallback FallbackMode  `json:"fallback"`
	Fleets   []FleetStatus `json:"fleets"`
}

// FleetStatus is one fleet as this instance sees it.
type FleetStatus struct {
	Fleet string `json:"fleet"`
	// Granting: Redis decides this fleet's admissions (wsgate_tracker_granting).
	Granting bool `json:"granting"`
	// Recovering: Redis answers, but the fleet's epoch is in its recovery
	// wait (wsgate_tracker_recovering); RecoveryWaitLeft estimates, on this
	// instance's clock, how long it still lasts.
	Recovering       bool    `json:"recovering"`
	RecoveryWaitLeft float64 `json:"recoveryWaitLeftSeconds"`
	// Degraded: a Redis call failed, admissions go to the fallback until a
	// heartbeat succeeds. Fenced: Redis refused to decide for this
	// instance (epoch: a newer epoch exists; lease: its lease ended).
	Degraded bool   `json:"degraded"`
	Fenced   string `json:"fenced,omitempty"`
	Epoch    string `json:"epoch,omitempty"`
	// LastHeartbeat is when a heartbeat last succeeded (absent before the
	// first), LastHeartbeatAge how long ago (-1 before the first).
	LastHeartbeat    *time.Time `json:"lastHeartbeat,omitempty"`
	LastHeartbeatAge float64    `json:"lastHeartbeatAgeSeconds"`
	// Redis is "ok" while its calls succeed, else what it last answered
	// (store.DescribeRedisError); LastRedisError is the last failure's, kept.
	Redis          string `json:"redis"`
	LastRedisError string `json:"lastRedisError,omitempty"`
	// Connections is what this instance holds on the fleet's pods.
	Connections int `json:"connections"`
	// LayoutMismatch: Redis recorded another layout (RedisLayout groups)
	// than this instance's shards, so none of the fleet's groups uses
	// Redis (PROTOCOL.md, "Shards"; wsgate_tracker_layout_mismatch).
	// RedisLayout is -1 while frozen (wsgate forget-layout).
	LayoutMismatch bool `json:"layoutMismatch,omitempty"`
	RedisLayout    int  `json:"redisLayout,omitempty"`
	// LayoutUnknown: no layout check has reached Redis yet, so none of the
	// fleet's groups uses Redis and it admits nothing
	// (wsgate_tracker_layout_unknown). LayoutError is the last check's
	// failure, kept until one succeeds.
	LayoutUnknown bool   `json:"layoutUnknown,omitempty"`
	LayoutError   string `json:"layoutError,omitempty"`
	// Shards and Groups, for a fleet with more than one group: each
	// group's own status (its Fleet is the group's name, fleets.GroupName).
	// The fleet's fields above sum or combine them: granting while every
	// group grants, degraded or recovering while any is, its oldest
	// heartbeat.
	Shards int           `json:"shards,omitempty"`
	Groups []FleetStatus `json:"groups,omitempty"`
}

// status reads f at now (wall clock).
func (f *fleet) status(now time.Time) FleetStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := FleetStatus{
		Fleet: f.name, Degraded: f.degraded, Epoch: f.epoch, LastRedisError: f.redisSaid, LastHeartbeatAge: -1,
		Granting: f.view.ok && !f.degraded && !f.fenced && f.granting && f.fam.layoutUsable(),
		// A fence by a newer epoch is a recovery wait this instance joins
		// at its next heartbeat (refusal).
		Recovering: f.view.ok && !f.degraded && (!f.granting || (f.fenced && f.fencedBy == store.FenceEpoch)),
	}
	if f.fenced {
		s.Fenced = string(f.fencedBy)
	}
	if s.Recovering && !f.recoveryEnd.IsZero() {
		s.RecoveryWaitLeft = max(0, f.recoveryEnd.Sub(now).Seconds())
	}
	if !f.lastHeartbeat.IsZero() {
		at := f.lastHeartbeat
		s.LastHeartbeat, s.LastHeartbeatAge = &at, now.Sub(at).Seconds()
	}
	switch {
	case f.degraded && f.redisSaid != "":
		s.Redis = f.redisSaid
	case f.degraded || !f.view.ok:
		s.Redis = "no answer yet"
	default:
		s.Redis = "ok"
	}
	for _, n := range f.live {
		s.Connections += n
	}
	return s
}

// Status reports the instance and every configured fleet.
func (t *Tracker) Status() Status {
	now := time.Now()
	st := Status{Instance: t.cfg.InstanceID, Draining: t.draining.Load(), Fallback: t.cfg.Fallback, Fleets: []FleetStatus{}}
	if err := t.Ready(); err != nil {
		st.NotReady = err.Error()
	} else {
		st.Ready = true
	}
	for _, name := range t.Fleets() {
		if fam, err := t.family(name); err == nil {
			st.Fleets = append(st.Fleets, fam.status(now))
		}
	}
	return st
}

// status reads fam at now: its one group's status, or its groups' combined.
func (fam *family) status(now time.Time) FleetStatus {
	groups := make([]FleetStatus, len(fam.groups))
	for k, f := range fam.groups {
		groups[k] = f.status(now)
	}
	s := groups[0]
	if len(groups) > 1 {
		s = FleetStatus{Fleet: fam.name, Granting: true, Epoch: groups[0].Epoch, Redis: "ok", LastHeartbeat: groups[0].LastHeartbeat,
			LastHeartbeatAge: groups[0].LastHeartbeatAge, Shards: len(groups), Groups: groups}
		for _, g := range groups {
			s.Granting = s.Granting && g.Granting
			s.Recovering = s.Recovering || g.Recovering
			s.RecoveryWaitLeft = max(s.RecoveryWaitLeft, g.RecoveryWaitLeft)
			s.Degraded = s.Degraded || g.Degraded
			s.Connections += g.Connections
			if s.Fenced == "" {
				s.Fenced = g.Fenced
			}
			if s.Redis == "ok" && g.Redis != "ok" {
				s.Redis = g.Fleet + ": " + g.Redis
			}
			if s.LastRedisError == "" && g.LastRedisError != "" {
				s.LastRedisError = g.Fleet + ": " + g.LastRedisError
			}
			switch {
			case g.LastHeartbeat == nil:
				s.LastHeartbeat, s.LastHeartbeatAge = nil, -1
			case s.LastHeartbeat != nil && g.LastHeartbeat.Before(*s.LastHeartbeat):
				s.LastHeartbeat, s.LastHeartbeatAge = g.LastHeartbeat, g.LastHeartbeatAge
			}
		}
	}
	fam.mu.Lock()
	recorded, said := fam.recorded, fam.layoutErr
	fam.mu.Unlock()
	switch fam.layout.Load() {
	case layoutMismatch:
		s.LayoutMismatch, s.RedisLayout = true, recorded
	case layoutUnknown:
		s.LayoutUnknown = true
	}
	s.LayoutError = said
	return s
}

// serveStatus answers GET /status with Status as JSON, 200 whatever it
// says: the answer is the information, readiness is /readyz's.
func (t *Tracker) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(t.Status())
}
