package tracker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/tracker"
)

func apply(t *testing.T, tr *tracker.Tracker, fleets ...fleets.Fleet) tracker.Change {
	t.Helper()
	ch, err := tr.Apply(fleets)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// Lowering the cap below a pod's live count cuts nothing: admissions wait
// until the pod is under the new cap. Raising it admits at once.
func TestApplyLowersTheCapWithoutCuttingConnections(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 3, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	var ids []string
	for range 3 {
		ids = append(ids, admit(t, tr, "chat").Conn)
	}
	if ch := apply(t, tr, fleetCfg("chat", 1, "10.0.0.1:80")); strings.Join(ch.Changed, ",") != "chat" || len(ch.Added)+len(ch.Removed) != 0 {
		t.Fatalf("change = %+v, want chat changed", ch)
	}
	heartbeat(t, tr)
	if got := sumLocal(t, "chat", tr)["10.0.0.1:80"]; got != 3 {
		t.Fatalf("after lowering the cap the pod holds %d, want the 3 it had", got)
	}
	for i := range 2 {
		if r := admit(t, tr, "chat"); r.Admitted || r.Reason != store.ReasonCapacity {
			t.Fatalf("admission %d at %d live under cap 1 = %+v, want capacity", i, 3-i, r)
		}
		release(t, tr, ids[i])
	}
	if r := admit(t, tr, "chat"); r.Admitted {
		t.Fatalf("admission at 1 live under cap 1 = %+v, want capacity", r)
	}
	release(t, tr, ids[2])
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("admission at 0 live under cap 1 = %+v, want admitted", r)
	}
	apply(t, tr, fleetCfg("chat", 2, "10.0.0.1:80"))
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("admission after raising the cap to 2 = %+v, want admitted", r)
	}
}

func TestApplyChangesRateRetryAfterAndPods(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleets.Fleet{Name: "chat", MaxConnectionsPerPod: 1, RatePerSecond: 1, Burst: 1, Pods: []string{"10.0.0.1:80"}}
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fc)
	start(t, mr, clk, tr)
	admit(t, tr, "chat")
	if r := admit(t, tr, "chat"); r.Reason != store.ReasonRateLimit {
		t.Fatalf("second admission in the same instant at 1/s = %+v, want rate_limit", r)
	}
	fc.RatePerSecond, fc.Burst, fc.RetryAfter = 100, 100, fleets.Duration(7*time.Second)
	fc.Pods = []string{"10.0.0.1:80", "10.0.0.2:80"}
	apply(t, tr, fc)
	clk.Advance(20 * time.Millisecond) // two tokens at 100/s; none at 1/s
	if r := admit(t, tr, "chat"); r.Reason != store.ReasonNoPods && r.Reason != store.ReasonCapacity {
		// The new pod is not in Redis until the next heartbeat writes it.
		t.Fatalf("admission right after raising the rate = %+v, want the pod full (not rate_limit)", r)
	} else if r.RetryAfter != 7*time.Second {
		t.Errorf("Retry-After = %s, want the new 7s", r.RetryAfter)
	}
	heartbeat(t, tr)
	if r := admit(t, tr, "chat"); !r.Admitted || r.Pod != "10.0.0.2:80" {
		t.Fatalf("admission after the heartbeat wrote the added pod = %+v, want 10.0.0.2:80", r)
	}
}

// Removing a static fleet's pods: list removes them from the registry,
// as discovery does. They are not placeable any more, and the connection
// one of them holds stays counted until it ends.
func TestApplyRemovingStaticPodsUnregistersThem(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 1, "10.0.0.1:80", "10.0.0.2:80"))
	start(t, mr, clk, tr)
	held := admit(t, tr, "chat")
	if !held.Admitted {
		t.Fatalf("admission = %+v, want admitted", held)
	}
	apply(t, tr, fleetCfg("chat", 1))
	heartbeat(t, tr)
	st := store.NewStore(rdb, "wsgate")
	snap, err := st.Snapshot(context.Background(), "chat", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Pods) != 0 {
		t.Fatalf("registry after removing pods: = %v, want empty", snap.Pods)
	}
	if got := snap.Load[held.Pod]; got != 1 {
		t.Fatalf("Redis counts %d on the removed pod %s, want its live connection (1)", got, held.Pod)
	}
	if r := admit(t, tr, "chat"); r.Admitted || r.Reason != store.ReasonNoPods {
		t.Fatalf("admission with every pod removed = %+v, want no_pods", r)
	}
	release(t, tr, held.Conn)
	heartbeat(t, tr)
	if snap, err = st.Snapshot(context.Background(), "chat", time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := snap.Load[held.Pod]; got != 0 {
		t.Fatalf("Redis counts %d on the removed pod %s after its connection ended, want 0", got, held.Pod)
	}
}

// An added fleet is served once Redis has its state: a fleet Redis never
// saw gets a new epoch, with the same wait as after data loss.
func TestApplyAddsAFleet(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 1, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	if _, err := tr.Admit(context.Background(), "game"); !errors.Is(err, tracker.ErrUnknownFleet) {
		t.Fatalf("admission to a fleet not configured yet: %v, want ErrUnknownFleet", err)
	}
	if ch := apply(t, tr, fleetCfg("chat", 1, "10.0.0.1:80"), fleetCfg("game", 1, "10.0.0.9:80")); strings.Join(ch.Added, ",") != "game" || len(ch.Changed) != 0 {
		t.Fatalf("change = %+v, want game added and chat unchanged", ch)
	}
	start(t, mr, clk, tr)
	if r := admit(t, tr, "game"); !r.Admitted || r.Pod != "10.0.0.9:80" {
		t.Fatalf("admission to the added fleet = %+v", r)
	}
	if got := strings.Join(tr.Fleets(), ","); got != "chat,game" {
		t.Errorf("Fleets() = %s", got)
	}
}

// A removed fleet admits nothing more, keeps its connections counted in
// Redis, and leaves Redis after the last one ended.
func TestApplyRemovesAFleetAfterItsLastConnection(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 1, "10.0.0.1:80"), fleetCfg("game", 2, "10.0.0.9:80"))
	start(t, mr, clk, tr)
	c := admit(t, tr, "game")
	if ch := apply(t, tr, fleetCfg("chat", 1, "10.0.0.1:80")); strings.Join(ch.Removed, ",") != "game" {
		t.Fatalf("change = %+v, want game removed", ch)
	}
	if _, err := tr.Admit(context.Background(), "game"); !errors.Is(err, tracker.ErrUnknownFleet) {
		t.Fatalf("admission to a removed fleet: %v, want ErrUnknownFleet", err)
	}
	store := storeOn(rdb)
	heartbeat(t, tr)
	s, err := store.Summary(context.Background(), "game", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s.Live != 1 {
		t.Fatalf("removed fleet with a live connection: Redis counts %d, want 1", s.Live)
	}
	if ids, _ := store.Instances(context.Background(), "game"); len(ids) != 1 {
		t.Fatalf("instances of the removed fleet while it holds a connection = %v, want e1", ids)
	}
	release(t, tr, c.Conn)
	heartbeat(t, tr)
	if ids, err := store.Instances(context.Background(), "game"); err != nil || len(ids) != 0 {
		t.Fatalf("instances of the removed fleet after its last connection = %v (%v), want none", ids, err)
	}
	if _, err := tr.LocalCounts("game"); !errors.Is(err, tracker.ErrUnknownFleet) {
		t.Errorf("the tracker still knows the removed fleet: %v", err)
	}
}

func TestApplyRefusesAnInvalidConfigurationWhole(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 1, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	bad := fleetCfg("game", 1, "not-an-address")
	if _, err := tr.Apply([]fleets.Fleet{fleetCfg("chat", 5, "10.0.0.1:80"), bad}); err == nil || !strings.Contains(err.Error(), "not-an-address") {
		t.Fatalf("apply of an invalid configuration: %v, want an error naming the bad pod", err)
	}
	if got := tr.Config().Fleets; len(got) != 1 || got[0].MaxConnectionsPerPod != 1 {
		t.Fatalf("after a refused change the configuration is %+v, want chat with cap 1 as before", got)
	}
}

// WatchFleets sees a ConfigMap update the way the kubelet makes it: a new
// timestamped directory and the ..data symlink swapped to it.
func TestWatchFleetsFollowsAConfigMapSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	write := func(version, content string) {
		t.Helper()
		d := filepath.Join(dir, "..2026_"+version)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "fleets.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(d), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	v1 := "fleets:\n- name: chat\n  maxConnectionsPerPod: 2\n"
	write("1", v1)
	if err := os.Symlink("..data/fleets.yaml", filepath.Join(dir, "fleets.yaml")); err != nil {
		t.Fatal(err)
	}
	applied := make(chan []fleets.Fleet, 4)
	m := fleets.NewReloadMetrics(nil, "tracker")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		fleets.Watch(ctx, filepath.Join(dir, "fleets.yaml"), []byte(v1), 10*time.Millisecond,
			func(f []fleets.Fleet) error { applied <- f; return nil }, m, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()

	write("2", "fleets:\n- name: chat\n  maxConnectionsPerPod: 3\n")
	if f := <-applied; len(f) != 1 || f[0].MaxConnectionsPerPod != 3 {
		t.Fatalf("applied %+v, want chat with cap 3", f)
	}
	write("3", "fleets:\n- name: chat\n  maxConnectionsPerPod: 0\n")
	awaitMetric(t, func() float64 { return testutil.ToFloat64(m.Reloads.WithLabelValues("invalid")) }, 1)
	if v := testutil.ToFloat64(m.LastSuccessful); v != 0 {
		t.Errorf("config_last_reload_successful = %v after an invalid file, want 0", v)
	}
	write("4", "fleets:\n- name: chat\n  maxConnectionsPerPod: 4\n")
	if f := <-applied; f[0].MaxConnectionsPerPod != 4 {
		t.Fatalf("applied %+v, want cap 4", f)
	}
	awaitMetric(t, func() float64 { return testutil.ToFloat64(m.LastSuccessful) }, 1)
	if n := testutil.ToFloat64(m.Reloads.WithLabelValues("applied")); n != 2 {
		t.Errorf("applied reloads = %v, want 2", n)
	}
	select {
	case f := <-applied:
		t.Errorf("the invalid file was applied: %+v", f)
	default:
	}
}

func awaitMetric(t *testing.T, get func() float64, want float64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for get() != want {
		if time.Now().After(deadline) {
			t.Fatalf("metric = %v, want %v", get(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// While trackers read different versions of the fleets file, each admits
// against its own cap and Redis counts all: the pod never holds more than
// the higher of the two.
func TestMixedCapsNeverExceedTheHigher(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fleetCfg("chat", 1, "10.0.0.1:80"))
	b := newTracker(t, rdb, "b", clk, tracker.FallbackShare, fleetCfg("chat", 3, "10.0.0.1:80"))
	start(t, mr, clk, a, b)
	if r := admit(t, b, "chat"); !r.Admitted {
		t.Fatalf("b under its cap 3: %+v", r)
	}
	if r := admit(t, a, "chat"); r.Admitted {
		t.Fatalf("a at 1 live under its cap 1 admitted: %+v", r)
	}
	for range 2 {
		if r := admit(t, b, "chat"); !r.Admitted {
			t.Fatalf("b under its cap 3: %+v", r)
		}
	}
	if r := admit(t, b, "chat"); r.Admitted {
		t.Fatalf("b at 3 live under its cap 3 admitted: %+v", r)
	}
	if got := podHolds(t, a, b); got != 3 {
		t.Errorf("pod holds %d, want 3", got)
	}
}

// Drain admits nothing and reports not ready, without forgetting a
// connection; Leave removes the instance from Redis at once, and no later
// heartbeat brings it back.
func TestDrainThenLeave(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 2, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	c := admit(t, tr, "chat")
	tr.Drain()
	if r := admit(t, tr, "chat"); r.Admitted || r.Reason != tracker.ReasonDraining {
		t.Fatalf("admission while draining = %+v, want draining", r)
	}
	if err := tr.Ready(); err == nil || !strings.Contains(err.Error(), "draining") {
		t.Errorf("Ready while draining: %v", err)
	}
	heartbeat(t, tr)
	store := storeOn(rdb)
	if s, _ := store.Summary(context.Background(), "chat", clk.Now()); s.Live != 1 || tr.Live() != 1 {
		t.Fatalf("while draining Redis counts %d and the tracker %d, want the 1 held", s.Live, tr.Live())
	}
	release(t, tr, c.Conn)
	if !tr.AwaitDrained(context.Background(), nil) {
		t.Fatal("AwaitDrained with nothing held")
	}
	if err := tr.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, tr)
	if ids, err := store.Instances(context.Background(), "chat"); err != nil || len(ids) != 0 {
		t.Fatalf("instances after Leave and a heartbeat = %v (%v), want none", ids, err)
	}
}

// holdLeave holds e1's leave script call (leave.lua: KEYS instances,
// ARGV prefix, id, seq) until release is closed.
type holdLeave struct {
	once             sync.Once
	started, release chan struct{}
}

func (h *holdLeave) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdLeave) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *holdLeave) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		a := cmd.Args()
		if (cmd.Name() == "evalsha" || cmd.Name() == "eval") && len(a) == 7 && fmt.Sprint(a[2]) == "1" &&
			strings.HasSuffix(fmt.Sprint(a[3]), ":instances") && fmt.Sprint(a[5]) == "e1" {
			h.once.Do(func() { close(h.started) })
			<-h.release
		}
		return next(ctx, cmd)
	}
}

// A removed fleet configured again while its leave is on its way: no
// admission is granted between the tracker's check that the fleet is
// empty and the leave, which would erase its count in Redis while its
// connection stays (the leave runs under the whole gate; PROTOCOL.md,
// "Leaving").
func TestFleetConfiguredAgainWhileItLeaves(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	chat, game := fleetCfg("chat", 1, "10.0.0.1:80"), fleetCfg("game", 1, "10.0.0.9:80")
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, chat, game)
	start(t, mr, clk, tr)
	apply(t, tr, chat) // game removed; it holds nothing
	h := &holdLeave{started: make(chan struct{}), release: make(chan struct{})}
	rdb.AddHook(h)
	beat := make(chan error, 1)
	go func() { beat <- tr.Heartbeat(context.Background()) }() // game's retire: its leave is held
	<-h.started
	apply(t, tr, chat, game)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := tr.Admit(ctx, "game")
	if err != nil {
		t.Fatal(err)
	}
	close(h.release)
	<-beat // its error, if any, is the other fleets' business
	st := storeOn(rdb)
	if n := storetest.Counted(t, st, "game"); res.Admitted && n < 1 {
		t.Fatalf("admitted %+v while the fleet's leave was on its way; Redis counts %d connections on game after the leave: want at least the 1 held", res, n)
	}
	// The next heartbeat counts whatever the instance holds again.
	heartbeat(t, tr)
	if s, err := st.Summary(context.Background(), "game", clk.Now()); err != nil || (res.Admitted && s.Live != 1) {
		t.Fatalf("after the next heartbeat Redis counts %d on game (%v); admitted %v", s.Live, err, res.Admitted)
	}
}
