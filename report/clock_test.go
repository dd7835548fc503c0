package report_test

import (
	"testing"
	"time"

	"github.com/wsgate/wsgate/report"
	"github.com/wsgate/wsgate/store"
)

// Leases and the recovery wait are times of Redis' clock: they are judged
// by the RedisNow the snapshot carries, never by the clock of the host
// running the report, however far off it is.
func TestLeasesJudgedByRedisClock(t *testing.T) {
	redisNow := t0
	snap := store.Snapshot{
		Fleet: "chat", Epoch: "1795607880000-0000beef", Synced: []string{"up"},
		RedisNow: redisNow, RecoveryUntil: redisNow.Add(20 * time.Second),
		Instances: []store.InstanceState{
			{ID: "down", LeaseUntil: redisNow.Add(-time.Second)},
			{ID: "up", LeaseUntil: redisNow.Add(time.Minute)},
		},
	}
	for _, skew := range []time.Duration{-time.Hour, 0, time.Hour} {
		rep := report.Build([]report.FleetState{{Snapshot: snap}}, report.Options{
			Views: []report.View{report.ViewDetailed, report.ViewReadiness}, Settle: time.Minute, ReadinessRatio: 0.95, Now: redisNow.Add(skew),
		})
		f := rep.Fleets[0]
		if in := f.Detailed.Instances; in[0].Alive || !in[1].Alive {
			t.Errorf("report clock %s off Redis': alive %+v, want down expired and up alive", skew, in)
		}
		r := f.Readiness
		if r.Alive != 1 || r.Synced != 1 || len(r.Unsynced) != 0 {
			t.Errorf("report clock %s off Redis': readiness %+v, want 1 alive, synced", skew, r)
		}
		if !r.Recovering || r.RecoverySecondsLeft != 20 || r.RecoveryUntil == nil || !r.RecoveryUntil.Equal(snap.RecoveryUntil) {
			t.Errorf("report clock %s off Redis': recovery %v %v %v, want 20s left", skew, r.Recovering, r.RecoverySecondsLeft, r.RecoveryUntil)
		}
	}
}

// The wait ends when Redis' clock passed `until` and a tracker confirmed
// it on its own clock, not before either.
func TestRecoveryNeedsBothClocks(t *testing.T) {
	for _, tc := range []struct {
		until     time.Duration // from Redis' now
		confirmed bool
		want      bool
	}{{time.Second, true, true}, {-time.Second, false, true}, {-time.Second, true, false}} {
		snap := store.Snapshot{Fleet: "chat", Epoch: "1795607880000-0000beef", RedisNow: t0, RecoveryUntil: t0.Add(tc.until), RecoveryConfirmed: tc.confirmed}
		r := report.Build([]report.FleetState{{Snapshot: snap}}, report.Options{Views: []report.View{report.ViewReadiness}, Now: t0}).Fleets[0].Readiness
		if r.Recovering != tc.want || r.RecoveryConfirmed != tc.confirmed || r.RecoverySecondsLeft != max(0, tc.until.Seconds()) {
			t.Errorf("until %s, confirmed %v: recovering %v (%gs left, confirmed %v), want %v", tc.until, tc.confirmed, r.Recovering, r.RecoverySecondsLeft, r.RecoveryConfirmed, tc.want)
		}
	}
}

// A snapshot without Redis' clock (RedisNow zero) is judged by Options.Now.
func TestLeasesWithoutRedisClock(t *testing.T) {
	snap := store.Snapshot{Fleet: "chat", Instances: []store.InstanceState{{ID: "a", LeaseUntil: t0}}}
	for now, alive := range map[time.Time]bool{t0.Add(-time.Second): true, t0.Add(time.Second): false} {
		rep := report.Build([]report.FleetState{{Snapshot: snap}}, report.Options{Views: []report.View{report.ViewDetailed}, Now: now})
		if got := rep.Fleets[0].Detailed.Instances[0].Alive; got != alive {
			t.Errorf("now %s, lease %s: alive %v, want %v", now, t0, got, alive)
		}
	}
}

// The readiness view holds, as the scaler does, while too few of the synced
// instances published their totals (trackers of an older version publish
// none, and the scaler's live count misses their connections).
func TestReadinessNeedsPublishedTotals(t *testing.T) {
	epoch := "1795607880000-0000beef" // t0 less 2 minutes
	for _, tc := range []struct {
		published bool
		ready     bool
	}{{false, false}, {true, true}} {
		snap := store.Snapshot{Fleet: "chat", Epoch: epoch, Synced: []string{"new", "old"}, RedisNow: t0,
			Instances: []store.InstanceState{
				{ID: "new", LeaseUntil: t0.Add(time.Minute), Published: true},
				{ID: "old", LeaseUntil: t0.Add(time.Minute), Published: tc.published},
			}}
		r := report.Build([]report.FleetState{{Snapshot: snap}}, report.Options{Views: []report.View{report.ViewReadiness},
			Settle: time.Second, ReadinessRatio: 0.95, Now: t0}).Fleets[0].Readiness
		if r.Ready != tc.ready {
			t.Errorf("old published %v: ready %v (%s), want %v", tc.published, r.Ready, r.Why, tc.ready)
		}
	}
}
