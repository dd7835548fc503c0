package tracker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/tracker"
)

// clock is a controlled time source shared by the trackers of a test.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func fleetCfg(name string, cap int, pods ...string) tracker.FleetConfig {
	return tracker.FleetConfig{Name: name, MaxConnectionsPerPod: cap, RatePerSecond: 1e6, Burst: 1e6, Pods: pods}
}

func newTracker(t *testing.T, rdb redis.UniversalClient, id string, clk *clock, fallback tracker.FallbackMode, fleets ...tracker.FleetConfig) *tracker.Tracker {
	t.Helper()
	tr, err := tracker.New(tracker.Config{
		InstanceID: id, Fleets: fleets, Heartbeat: time.Second, InstanceTTL: 5 * time.Second,
		EstablishTimeout: 10 * time.Second, LeaseTTL: 30 * time.Second, RedisTimeout: time.Second, Fallback: fallback,
	}, tracker.NewStore(rdb, "wsgate"), tracker.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func miniClient(t *testing.T) (*redis.Client, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	return rdb, mr
}

// settle runs heartbeat rounds until every instance has seen every other
// heartbeat after the last membership change: only then does each take its
// share in a fallback (three rounds when they joined one after another).
func settle(t *testing.T, clk *clock, trs ...*tracker.Tracker) {
	t.Helper()
	for round := 0; round < 3; round++ {
		clk.Advance(time.Second)
		heartbeat(t, trs...)
	}
}

func heartbeat(t *testing.T, trs ...*tracker.Tracker) {
	t.Helper()
	for _, tr := range trs {
		if err := tr.Heartbeat(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func admit(t *testing.T, tr *tracker.Tracker, fleet string) tracker.Result {
	t.Helper()
	res, err := tr.Admit(context.Background(), fleet)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestRateLimitIsLocalAndRecorded(t *testing.T) {
	rdb, _ := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 100, "10.0.0.1:80")
	fc.RatePerSecond, fc.Burst = 1, 1
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fc)
	heartbeat(t, tr)
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("first admission = %+v", r)
	}
	r := admit(t, tr, "chat")
	if r.Admitted || r.Reason != tracker.ReasonRateLimit || r.RetryAfter != time.Second {
		t.Fatalf("second admission in the same instant = %+v, want rate_limit with Retry-After 1s", r)
	}
	clk.Advance(time.Second)
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("admission after a second = %+v, want admitted", r)
	}
	heartbeat(t, tr) // flushes the buffered rate_limit rejection
	snap, err := tr.Store().Snapshot(context.Background(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Rejections[tracker.ReasonRateLimit].M5; got != 1 {
		t.Errorf("fleet rate_limit rejections = %d, want 1", got)
	}
	if len(snap.Instances) != 1 || snap.Instances[0].Rejections[tracker.ReasonRateLimit].M5 != 1 {
		t.Errorf("rate_limit not attributed to e1: %+v", snap.Instances)
	}
}

func TestUnestablishedAndUnrenewedConnectionsAreReleased(t *testing.T) {
	rdb, _ := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 10, "10.0.0.1:80"))
	heartbeat(t, tr)
	pending := admit(t, tr, "chat")
	live := admit(t, tr, "chat")
	if err := tr.Establish(live.Conn); err != nil {
		t.Fatal(err)
	}
	load := func() int64 {
		t.Helper()
		s, err := tr.Store().Summary(context.Background(), "chat", clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s.Live
	}
	clk.Advance(11 * time.Second) // past EstablishTimeout
	heartbeat(t, tr)
	if got := load(); got != 1 {
		t.Fatalf("after the establish timeout live = %d, want 1 (the established one)", got)
	}
	if err := tr.Renew(pending.Conn); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("renew of an expired connection: %v, want ErrUnknownConn", err)
	}
	for i := 0; i < 3; i++ { // renewed in time: kept
		clk.Advance(20 * time.Second)
		if err := tr.Renew(live.Conn); err != nil {
			t.Fatal(err)
		}
		heartbeat(t, tr)
	}
	if got := load(); got != 1 {
		t.Fatalf("renewed connection dropped: live = %d", got)
	}
	clk.Advance(31 * time.Second) // past LeaseTTL without renewal
	heartbeat(t, tr)
	if got := load(); got != 0 {
		t.Fatalf("after the lease expired live = %d, want 0", got)
	}
}

// TestExpiredButRenewedConnectionIsCountedAgain: a connection released for
// lost renewals that Envoy then reports alive is counted again.
func TestExpiredButRenewedConnectionIsCountedAgain(t *testing.T) {
	rdb, _ := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 10, "10.0.0.1:80"))
	heartbeat(t, tr)
	c := admit(t, tr, "chat")
	if err := tr.Establish(c.Conn); err != nil {
		t.Fatal(err)
	}
	clk.Advance(31 * time.Second) // renewals lost past the lease
	heartbeat(t, tr)
	if err := tr.Renew(c.Conn); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Fatalf("renewal of an expired connection: %v", err)
	}
	if err := tr.Adopt("chat", c.Conn, c.Pod, true); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("end of an expired connection: %v, want ErrUnknownConn (nothing to give back)", err)
	}
	if err := tr.Adopt("chat", c.Conn, c.Pod, false); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, tr)
	s, err := tr.Store().Summary(context.Background(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s.Live != 1 {
		t.Errorf("Redis counts %d after Envoy reported the connection alive, want 1", s.Live)
	}
	if err := tr.Release(context.Background(), c.Conn); err != nil {
		t.Errorf("the counted-again connection cannot be released: %v", err)
	}
}

func TestReleaseFreesTheSlotAndRejectsUnknownIDs(t *testing.T) {
	rdb, _ := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 1, "10.0.0.1:80"))
	heartbeat(t, tr)
	a := admit(t, tr, "chat")
	if r := admit(t, tr, "chat"); r.Admitted || r.Reason != tracker.ReasonCapacity || r.RetryAfter != 5*time.Second {
		t.Fatalf("admission over the cap = %+v, want capacity with the default Retry-After", r)
	}
	if err := tr.Release(context.Background(), a.Conn); err != nil {
		t.Fatal(err)
	}
	if err := tr.Release(context.Background(), a.Conn); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("second release: %v, want ErrUnknownConn", err)
	}
	if err := tr.Release(context.Background(), ""); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("release of an empty id: %v, want ErrUnknownConn", err)
	}
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("admission after release = %+v", r)
	}
	if _, err := tr.Admit(context.Background(), "nope"); !errors.Is(err, tracker.ErrUnknownFleet) {
		t.Errorf("unknown fleet: %v, want ErrUnknownFleet", err)
	}
}

// sumLocal adds up the trackers' own counts per pod.
func sumLocal(t *testing.T, fleet string, trs ...*tracker.Tracker) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, tr := range trs {
		c, err := tr.LocalCounts(fleet)
		if err != nil {
			t.Fatal(err)
		}
		for p, n := range c {
			out[p] += n
		}
	}
	return out
}

func TestFallbackShareKeepsTheFleetUnderTheCap(t *testing.T) {
	for _, preload := range []int{0, 1, 3} {
		t.Run(fmt.Sprintf("%d before the outage", preload), func(t *testing.T) {
			rdb, mr := miniClient(t)
			clk := newClock()
			pods := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}
			const cap = 3
			var trs []*tracker.Tracker
			for i := 0; i < 4; i++ {
				trs = append(trs, newTracker(t, rdb, fmt.Sprintf("e%d", i), clk, tracker.FallbackShare, fleetCfg("chat", cap, pods...)))
			}
			heartbeat(t, trs...)
			for i := 0; i < preload; i++ {
				admit(t, trs[i%len(trs)], "chat")
			}
			settle(t, clk, trs...) // every instance sees the same load, and knows all the others
			mr.SetError("ERR injected outage")
			admitted := 0
			for round := 0; round < 5; round++ {
				for _, tr := range trs {
					if r := admit(t, tr, "chat"); r.Admitted {
						if !r.Fallback {
							t.Fatalf("admitted through Redis during the outage: %+v", r)
						}
						admitted++
					} else if r.Reason != tracker.ReasonRedisDown {
						t.Fatalf("rejection during the outage = %+v, want redis_down", r)
					}
				}
			}
			total := 0
			for pod, n := range sumLocal(t, "chat", trs...) {
				if n > cap {
					t.Errorf("pod %s holds %d connections across instances, cap %d", pod, n, cap)
				}
				total += n
			}
			// The headroom is shared out exactly: the fleet fills up, no more.
			if want := cap * len(pods); total != want {
				t.Errorf("fleet holds %d connections after the outage rounds, want all %d slots used", total, want)
			}
			if !trs[0].Degraded("chat") {
				t.Error("tracker does not report the fallback")
			}
			mr.SetError("")
			heartbeat(t, trs...)
			if trs[0].Degraded("chat") {
				t.Error("fallback still on after a successful heartbeat")
			}
			snap, err := trs[0].Store().Snapshot(context.Background(), "chat", clk.Now())
			if err != nil {
				t.Fatal(err)
			}
			local := sumLocal(t, "chat", trs...)
			for _, pod := range pods {
				if snap.Load[pod] != local[pod] {
					t.Errorf("after recovery Redis has %d on %s, the instances %d", snap.Load[pod], pod, local[pod])
				}
			}
			if got := snap.Rejections[tracker.ReasonRedisDown].M5; got != int64(20-admitted) {
				t.Errorf("redis_down rejections flushed = %d, want %d", got, 20-admitted)
			}
		})
	}
}

// TestNewcomerTakesNoShareUntilKnownToAll: an instance that joined after
// another's last heartbeat is missing from that one's view; if Redis fails
// then, the newcomer must not add its share on top.
func TestNewcomerTakesNoShareUntilKnownToAll(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 4, "10.0.0.1:80", "10.0.0.2:80")
	old := newTracker(t, rdb, "old", clk, tracker.FallbackShare, fc)
	heartbeat(t, old) // old sees only itself
	clk.Advance(time.Second)
	newcomer := newTracker(t, rdb, "new", clk, tracker.FallbackShare, fc)
	heartbeat(t, newcomer) // the newcomer sees both
	mr.SetError("ERR outage before old heartbeats again")
	for i := 0; i < 12; i++ {
		admit(t, old, "chat")
		if r := admit(t, newcomer, "chat"); r.Admitted {
			t.Fatalf("newcomer admitted in fallback before the others knew it: %+v", r)
		}
	}
	for pod, n := range sumLocal(t, "chat", old, newcomer) {
		if n > 4 {
			t.Errorf("pod %s holds %d, cap 4", pod, n)
		}
	}
	// Once the old instance has heartbeated after the newcomer joined, and
	// the newcomer has seen that, the newcomer takes its share.
	mr.SetError("")
	clk.Advance(time.Second)
	heartbeat(t, old, newcomer) // old's connections expire: never established
	for round := 0; round < 3; round++ {
		clk.Advance(10 * time.Second)
		heartbeat(t, old, newcomer)
	}
	if n := sumLocal(t, "chat", old, newcomer); len(n) != 0 {
		t.Fatalf("connections left before the second outage: %v", n)
	}
	mr.SetError("ERR second outage")
	admitted := 0
	for i := 0; i < 12; i++ {
		if r := admit(t, newcomer, "chat"); r.Admitted {
			admitted++
		}
	}
	if admitted != 4 {
		t.Errorf("settled newcomer admitted %d in the second outage, want its share: 2 pods x 4/2", admitted)
	}
}

// TestFallbackWithViewsOfDifferentMoments: each instance's view comes from
// its own last heartbeat; connections moved between the two. The parts of
// the headroom then no longer add up, the parts of the cap still do.
func TestFallbackWithViewsOfDifferentMoments(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 4, "10.0.0.1:80")
	a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc)
	b := newTracker(t, rdb, "b", clk, tracker.FallbackShare, fc)
	settle(t, clk, a, b)
	var held []string
	for i := 0; i < 3; i++ {
		held = append(held, admit(t, a, "chat").Conn)
	}
	admit(t, b, "chat")
	heartbeat(t, a) // a's view: a 3, b 1
	if err := a.Release(context.Background(), held[0]); err != nil {
		t.Fatal(err)
	}
	if r := admit(t, b, "chat"); !r.Admitted {
		t.Fatalf("b could not take the freed slot: %+v", r)
	}
	heartbeat(t, b) // b's view: a 2, b 2
	mr.SetError("ERR outage")
	for i := 0; i < 3; i++ {
		admit(t, a, "chat")
		admit(t, b, "chat")
	}
	if n := sumLocal(t, "chat", a, b)["10.0.0.1:80"]; n > 4 {
		t.Errorf("the pod holds %d across instances during the outage, cap 4", n)
	}
}

// TestAfterDataLossWaitForTheOthers: when Redis comes back empty, the first
// instance to re-publish must not admit through Redis (which then holds only
// its own connections) until the others have re-published theirs.
func TestAfterDataLossWaitForTheOthers(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 1, "10.0.0.1:80", "10.0.0.2:80")
	a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc)
	b := newTracker(t, rdb, "b", clk, tracker.FallbackShare, fc)
	settle(t, clk, a, b)
	admit(t, a, "chat")
	admit(t, b, "chat") // both pods full
	heartbeat(t, a, b)

	mr.FlushAll()
	clk.Advance(time.Second)
	heartbeat(t, a) // a re-publishes; b has not yet
	if r := admit(t, a, "chat"); r.Admitted {
		t.Fatalf("admitted before the other instance re-published: %+v", r)
	}
	if n := sumLocal(t, "chat", a, b); n["10.0.0.1:80"] > 1 || n["10.0.0.2:80"] > 1 {
		t.Fatalf("over the cap: %v", n)
	}
	heartbeat(t, b, a) // b re-publishes, a sees it
	r := admit(t, a, "chat")
	if r.Admitted || r.Fallback || r.Reason != tracker.ReasonCapacity {
		t.Fatalf("after both re-published: %+v, want a capacity rejection through Redis", r)
	}
}

// TestFallbackWithDifferentPodLists: instances whose last views list
// different pods (discovery added one between their heartbeats) must still
// agree on who gets each pod's remainder.
func TestFallbackWithDifferentPodLists(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 3)
	a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc)
	b := newTracker(t, rdb, "b", clk, tracker.FallbackShare, fc)
	store := a.Store()
	mustSetPods(t, store, "chat", podsOf("10.0.0.1:80", "10.0.0.2:80"))
	settle(t, clk, a, b)
	mustSetPods(t, store, "chat", podsOf("10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"))
	heartbeat(t, b) // b sees three pods, a still two
	mr.SetError("ERR outage")
	for i := 0; i < 10; i++ {
		admit(t, a, "chat")
		admit(t, b, "chat")
	}
	for pod, n := range sumLocal(t, "chat", a, b) {
		if n > 3 {
			t.Errorf("pod %s holds %d across instances, cap 3", pod, n)
		}
	}
}

// TestFallbackEndsWithTheLease: an instance cut off from Redis longer than
// its lease may have been reaped by one that is not; its share is gone.
func TestFallbackEndsWithTheLease(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 4, "10.0.0.1:80"))
	heartbeat(t, tr)
	mr.SetError("ERR partition")
	clk.Advance(4 * time.Second) // within the 5s lease
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("within its lease: %+v", r)
	}
	clk.Advance(time.Second) // the lease has run out
	if r := admit(t, tr, "chat"); r.Admitted || r.Reason != tracker.ReasonRedisDown {
		t.Fatalf("after its lease: %+v, want redis_down", r)
	}
}

func TestFallbackClosedAndOpen(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	closed := newTracker(t, rdb, "closed", clk, tracker.FallbackClosed, fleetCfg("chat", 2, "10.0.0.1:80"))
	open := newTracker(t, rdb, "open", clk, tracker.FallbackOpen, fleetCfg("chat", 2, "10.0.0.1:80"))
	heartbeat(t, closed, open)
	mr.SetError("ERR injected outage")
	if r := admit(t, closed, "chat"); r.Admitted || r.Reason != tracker.ReasonRedisDown {
		t.Errorf("closed fallback admitted: %+v", r)
	}
	// open: up to the cap as if the other instance admitted nothing.
	for i := 0; i < 2; i++ {
		if r := admit(t, open, "chat"); !r.Admitted || !r.Fallback {
			t.Errorf("open fallback admission %d = %+v", i, r)
		}
	}
	if r := admit(t, open, "chat"); r.Admitted {
		t.Errorf("open fallback went past the cap on its own counts: %+v", r)
	}
}

func TestFallbackNeedsOneHeartbeat(t *testing.T) {
	rdb, mr := miniClient(t)
	mr.SetError("ERR down from the start")
	tr := newTracker(t, rdb, "e1", newClock(), tracker.FallbackShare, fleetCfg("chat", 2, "10.0.0.1:80"))
	if err := tr.Heartbeat(context.Background()); err == nil {
		t.Fatal("heartbeat succeeded against a failing Redis")
	}
	// Without a view of the other instances nothing can be admitted safely.
	if r := admit(t, tr, "chat"); r.Admitted || r.Reason != tracker.ReasonRedisDown {
		t.Errorf("admission before any heartbeat = %+v, want redis_down", r)
	}
	if err := tr.Ready(); err == nil {
		t.Error("Ready() before any heartbeat reached Redis")
	}
}

func TestHeadroomSharesAddUpToTheHeadroom(t *testing.T) {
	for n := 1; n <= 7; n++ {
		for headroom := -1; headroom <= 12; headroom++ {
			for pod := 0; pod < 9; pod++ {
				sum, most, least := 0, 0, 1<<30
				for rank := 0; rank < n; rank++ {
					s := tracker.HeadroomShare(headroom, n, rank, pod)
					sum += s
					most, least = max(most, s), min(least, s)
				}
				if want := max(0, headroom); sum != want {
					t.Fatalf("n=%d headroom=%d pod=%d: shares add up to %d", n, headroom, pod, sum)
				}
				if most-least > 1 {
					t.Fatalf("n=%d headroom=%d pod=%d: shares differ by %d", n, headroom, pod, most-least)
				}
			}
		}
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	base := func() tracker.Config {
		return tracker.Config{InstanceID: "e1", Fleets: []tracker.FleetConfig{{Name: "chat"}}}
	}
	cases := map[string]struct {
		mut  func(*tracker.Config)
		want string
	}{
		"no fleets":     {func(c *tracker.Config) { c.Fleets = nil }, "fleets"},
		"bad instance":  {func(c *tracker.Config) { c.InstanceID = "a b" }, "instance id"},
		"bad cap":       {func(c *tracker.Config) { c.Fleets[0].MaxConnectionsPerPod = -1 }, "maxConnectionsPerPod"},
		"bad policy":    {func(c *tracker.Config) { c.Fleets[0].Policy = "random" }, "policy"},
		"bad rate":      {func(c *tracker.Config) { c.Fleets[0].RatePerSecond = -2 }, "ratePerSecond"},
		"bad pod":       {func(c *tracker.Config) { c.Fleets[0].Pods = []string{"pod-a:80"} }, "not an IP"},
		"dup pod":       {func(c *tracker.Config) { c.Fleets[0].Pods = []string{"10.0.0.1:80", "10.0.0.1:80"} }, "twice"},
		"dup fleet":     {func(c *tracker.Config) { c.Fleets = append(c.Fleets, c.Fleets[0]) }, "defined twice"},
		"bad fallback":  {func(c *tracker.Config) { c.Fallback = "maybe" }, "fallback"},
		"ttl too short": {func(c *tracker.Config) { c.Heartbeat, c.InstanceTTL = time.Second, time.Second }, "instanceTTL"},
		"svc and pods":  {func(c *tracker.Config) { c.Fleets[0].Service, c.Fleets[0].Pods = "chat", []string{"10.0.0.1:80"} }, "choose one"},
	}
	for name, c := range cases {
		cfg := base()
		c.mut(&cfg)
		_, err := tracker.New(cfg, nil)
		if err == nil || !contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %q", name, err, c.want)
		}
	}
}

func TestParseFleets(t *testing.T) {
	fleets, err := tracker.ParseFleets([]byte("fleets:\n- name: chat\n  retryAfter: 2s\n  pods: ['10.0.0.1:80']\n"))
	if err != nil {
		t.Fatal(err)
	}
	f := fleets[0]
	if f.MaxConnectionsPerPod != 2 || f.RatePerSecond != 1 || f.Burst != 1 || f.Policy != tracker.PolicyPack || time.Duration(f.RetryAfter) != 2*time.Second {
		t.Errorf("defaults not applied: %+v", f)
	}
	for doc, want := range map[string]string{
		"fleets:\n- name: chat\n  maxConectionsPerPod: 3\n": "maxConectionsPerPod",
		"fleets:\n- name: chat\n  retryAfter: 5\n":          "duration",
		"fleets: []\n":          "no fleets",
		"fleets:\n- name: ''\n": "fleet name",
	} {
		if _, err := tracker.ParseFleets([]byte(doc)); err == nil || !contains(err.Error(), want) {
			t.Errorf("ParseFleets(%q) = %v, want an error naming %q", doc, err, want)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestRestartedTrackerKeepsItsConnectionsCounted: a tracker that restarts
// while its Envoy keeps its connections must not publish an empty truth.
func TestRestartedTrackerKeepsItsConnectionsCounted(t *testing.T) {
	rdb, _ := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 2, "10.0.0.1:80", "10.0.0.2:80")
	before := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fc)
	heartbeat(t, before)
	var held []tracker.Result
	for i := 0; i < 3; i++ {
		held = append(held, admit(t, before, "chat"))
	}
	heartbeat(t, before)

	after := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fc) // same instance, new process
	heartbeat(t, after)
	live := func() int64 {
		s, err := after.Store().Summary(context.Background(), "chat", clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s.Live
	}
	if got := live(); got != 3 {
		t.Fatalf("after the restart Redis counts %d, want the 3 Envoy still holds", got)
	}
	if r := admit(t, after, "chat"); !r.Admitted {
		t.Fatalf("the one free slot was not admitted: %+v", r)
	} else if r2 := admit(t, after, "chat"); r2.Admitted {
		t.Fatalf("admitted past the cap after a restart: %+v", r2)
	}
	// Envoy's access log names two of the old connections: one renews, one ends.
	if err := after.Adopt("chat", held[0].Conn, held[0].Pod, false); err != nil {
		t.Fatal(err)
	}
	if err := after.Adopt("chat", held[1].Conn, held[1].Pod, true); err != nil {
		t.Fatal(err)
	}
	if err := after.Adopt("chat", held[1].Conn, held[1].Pod, true); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("a second end of the same connection: %v, want ErrUnknownConn", err)
	}
	if err := after.Adopt("chat", "x", "not-an-address", false); err == nil {
		t.Error("adopted a connection to a malformed pod address")
	}
	heartbeat(t, after)
	if got := live(); got != 3 {
		t.Fatalf("after one end and one renewal Redis counts %d, want 3 (2 old + 1 new)", got)
	}
	// One lease later the never-named inherited connection is gone; the
	// adopted one, renewed, stays.
	clk.Advance(25 * time.Second)
	if err := after.Renew(held[0].Conn); err != nil {
		t.Fatal(err)
	}
	clk.Advance(6 * time.Second)
	heartbeat(t, after)
	if err := after.Renew(held[0].Conn); err != nil {
		t.Fatalf("adopted connection lost: %v", err)
	}
	if got := live(); got != 1 {
		t.Errorf("after the inherited lease Redis counts %d, want 1 (the adopted one; the new one expired unestablished)", got)
	}
}
