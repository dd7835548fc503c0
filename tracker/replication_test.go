package tracker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// waitTracker is a tracker of fleet chat (cap 10, one pod) on srv, whose
// admissions wait for replicas replicas, within wait; its logs go to logs.
func waitTracker(t *testing.T, srv *redistest.Server, replicas int, wait time.Duration, expired fleets.ExpiredMode, check string, logs *syncBuffer) (*tracker.Tracker, *tracker.Metrics) {
	t.Helper()
	m := tracker.NewMetrics(nil)
	tr, err := tracker.New(tracker.Config{InstanceID: "e1", Heartbeat: 200 * time.Millisecond, InstanceTTL: time.Second, RedisTimeout: 4 * wait,
		Fleets: []fleets.Fleet{fleetCfg("chat", 10, "10.0.0.1:80")}, WaitReplicas: replicas, WaitTimeout: wait,
		ExpiredInstances: expired, ReplicationCheck: check},
		store.NewStore(srv.Client(), "wsgate"), tracker.WithMetrics(m), tracker.WithLogger(slog.New(slog.NewJSONHandler(logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	return tr, m
}

func awaitGranting(t *testing.T, tr *tracker.Tracker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tr.AwaitGranting(ctx); err != nil {
		t.Fatal(err)
	}
}

// With --redis-wait-replicas 1: admissions go through Redis while the
// replica acknowledges them (and it has them); with the replica frozen,
// every admission is refused to the fallback within --redis-timeout, as a
// lost reply: degraded until the next heartbeat, which publishes the
// truth; once the replica is back, admissions go through Redis again.
func TestAdmissionsWaitForTheReplica(t *testing.T) {
	primary := redistest.Start(t)
	replica := redistest.StartReplica(t, primary)
	var logs syncBuffer
	// Long enough for a busy machine's acknowledgements: the refusals
	// below each wait it out.
	const wait = time.Second
	tr, _ := waitTracker(t, primary, 1, wait, fleets.ExpiredKeep, "", &logs)
	awaitGranting(t, tr)
	for range 2 {
		if res := admit(t, tr, "chat"); !res.Admitted || res.Fallback {
			t.Fatalf("admit with a live replica: %+v", res)
		}
	}
	if got := storetest.Held(t, replica.Client(), "chat", "e1"); got != 2 {
		t.Fatalf("replica counts %d for e1 after 2 admissions, want 2", got)
	}

	replica.Stop()
	defer replica.Cont()
	for i := range 3 {
		start := time.Now()
		res := admit(t, tr, "chat")
		d := time.Since(start)
		if res.Admitted || !res.Fallback || res.Reason != store.ReasonRedisDown {
			t.Fatalf("admission %d with the replica stopped: %+v, want refused by the fallback (redis_down)", i, res)
		}
		if d >= 4*wait {
			t.Errorf("admission %d took %s, beyond --redis-timeout %s", i, d, 4*wait)
		}
		if !tr.Degraded("chat") {
			t.Errorf("admission %d: not degraded after a grant that was not acknowledged", i)
		}
		// Counted as its own why: the alert on a WAIT outage reads it
		// (heartbeats succeed meanwhile and end the fallback each time).
		if n := testutil.ToFloat64(tr.Metrics().Fallbacks.WithLabelValues("chat", "not_replicated")); n != float64(i+1) {
			t.Errorf("admission %d: fallback decisions why=not_replicated %v, want %d", i, n, i+1)
		}
		// The heartbeat needs no WAIT: it publishes the truth (2), and
		// the next admission tries Redis again.
		if err := tr.Heartbeat(context.Background()); err != nil {
			t.Fatalf("heartbeat with the replica stopped: %v", err)
		}
		if got := storetest.Held(t, primary.Client(), "chat", "e1"); got != 2 {
			t.Errorf("after the heartbeat the primary counts %d for e1, want the 2 held", got)
		}
	}
	if !strings.Contains(logs.String(), "--redis-wait-replicas") {
		t.Errorf("no warning names --redis-wait-replicas:\n%s", logs.String())
	}

	replica.Cont()
	if res := admit(t, tr, "chat"); !res.Admitted || res.Fallback {
		t.Fatalf("admit with the replica back: %+v", res)
	}
	if got := storetest.Held(t, replica.Client(), "chat", "e1"); got != 3 {
		t.Errorf("replica counts %d for e1, want 3", got)
	}
}

func safe(m *tracker.Metrics) float64 {
	return testutil.ToFloat64(m.ReplicationSafe.WithLabelValues("chat"))
}

// The check is quiet for a single Redis; with replicas it warns (or, with
// refuse, fails) for each combination that cannot keep the cap under split
// brain, naming the flag or setting that fixes it.
func TestReplicationCheck(t *testing.T) {
	ctx := context.Background()
	single := redistest.Start(t)
	var logs syncBuffer
	tr, m := waitTracker(t, single, 0, 50*time.Millisecond, fleets.ExpiredReap, tracker.ReplicationRefuse, &logs)
	if safe(m) != 0 {
		t.Errorf("gauge before any check: %v, want 0", safe(m))
	}
	if err := tr.CheckReplication(ctx); err != nil {
		t.Fatalf("single Redis, reap, refuse: %v", err)
	}
	if safe(m) != 1 || strings.Contains(logs.String(), `"level":"WARN"`) || strings.Contains(logs.String(), `"level":"ERROR"`) {
		t.Errorf("single Redis: gauge %v, logs:\n%s", safe(m), logs.String())
	}

	primary := redistest.Start(t)
	redistest.StartReplica(t, primary)
	for _, c := range []struct {
		name     string
		replicas int
		expired  fleets.ExpiredMode
		want     string // "" for safe
	}{
		{"no wait", 0, fleets.ExpiredKeep, "set --redis-wait-replicas to the number of replicas of the primary (1)"},
		{"wait 1", 1, fleets.ExpiredKeep, ""},
		{"wait 1 kube", 1, fleets.ExpiredKube, ""},
		{"wait 1 reap", 1, fleets.ExpiredReap, "set expiredInstances: keep or kube"},
	} {
		for _, mode := range []string{tracker.ReplicationWarn, tracker.ReplicationRefuse} {
			var logs syncBuffer
			tr, m := waitTracker(t, primary, c.replicas, 50*time.Millisecond, c.expired, mode, &logs)
			err := tr.CheckReplication(ctx)
			switch {
			case c.want == "" && (err != nil || safe(m) != 1):
				t.Errorf("%s, %s: %v, gauge %v, want safe", c.name, mode, err, safe(m))
			case c.want == "":
			case !strings.Contains(logs.String(), c.want) || safe(m) != 0:
				t.Errorf("%s, %s: gauge %v, want 0 and a log naming %q:\n%s", c.name, mode, safe(m), c.want, logs.String())
			case mode == tracker.ReplicationRefuse && !errors.Is(err, tracker.ErrSplitBrainRisk):
				t.Errorf("%s, refuse: %v, want ErrSplitBrainRisk", c.name, err)
			case mode == tracker.ReplicationWarn && err != nil:
				t.Errorf("%s, warn: %v, want no error", c.name, err)
			}
		}
	}
}

// At a new epoch (what a failover looks like) the check runs again: a
// replica added since makes WAIT 1 too few; with refuse the tracker goes on
// admitting, logs an error and says 0 on the gauge.
func TestReplicationCheckAtANewEpoch(t *testing.T) {
	primary := redistest.Start(t)
	redistest.StartReplica(t, primary)
	var logs syncBuffer
	tr, m := waitTracker(t, primary, 1, 300*time.Millisecond, fleets.ExpiredKeep, tracker.ReplicationRefuse, &logs)
	if err := tr.CheckReplication(context.Background()); err != nil || safe(m) != 1 {
		t.Fatalf("start, one replica, WAIT 1: %v, gauge %v", err, safe(m))
	}
	awaitGranting(t, tr)
	tracker.CheckNewEpochs(tr) // the first epoch: the start's check covered it
	if n := strings.Count(logs.String(), "Redis replication checked"); n != 1 {
		t.Errorf("%d checks after the first epoch, want the start's only:\n%s", n, logs.String())
	}

	redistest.StartReplica(t, primary)
	redistest.AwaitReplicas(t, primary, 2)
	tracker.CheckNewEpochs(tr) // same epoch: not checked again
	if safe(m) != 1 {
		t.Fatalf("checked again without a new epoch")
	}
	// Redis loses the fleet's state: the next heartbeat makes a new epoch.
	if err := primary.Client().Del(context.Background(), store.NewStore(primary.Client(), "wsgate").Keys("chat").Epoch()).Err(); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, tr)
	tracker.CheckNewEpochs(tr)
	if safe(m) != 0 || !strings.Contains(logs.String(), "set --redis-wait-replicas 2") || !strings.Contains(logs.String(), "found at a new epoch; admissions go on") {
		t.Errorf("new epoch, 2 replicas, WAIT 1, refuse: gauge %v, logs:\n%s", safe(m), logs.String())
	}
}

// A fleet with shards shows the least of its groups' last findings, a
// group never checked counting as 0: a check of some groups only (one
// group's new epoch, a group whose server could not be reached) neither
// shows the fleet safe while another group is unchecked or at risk, nor
// forgets an earlier group's risk (review finding 7).
func TestReplicationSafeIsTheLeastOverAllGroups(t *testing.T) {
	rdb, _ := miniClient(t)
	tr := newTracker(t, rdb, "e1", newClock(), tracker.FallbackShare, shardedCfg("chat", 3, 1, podAddrs(3)...))
	m := tr.Metrics()
	for _, step := range []struct {
		found map[string]float64
		want  float64
	}{
		{map[string]float64{"chat": 1, "chat#1": 1}, 0}, // chat#2 unchecked
		{map[string]float64{"chat#2": 1}, 1},
		{map[string]float64{"chat#1": 0}, 0},
		{map[string]float64{"chat#2": 1}, 0}, // chat#1's risk stands
		{map[string]float64{"chat#1": 1}, 1},
	} {
		tracker.PublishReplication(tr, step.found)
		if got := safe(m); got != step.want {
			t.Errorf("after %v: gauge %v, want %v", step.found, got, step.want)
		}
	}
}
