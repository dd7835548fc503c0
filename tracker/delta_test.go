package tracker_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// syncCall is one heartbeat call as Redis received it.
type syncCall struct {
	kind    string         // full or delta
	pods    map[string]int // the pods sent, with their live count
	total   int            // the instance's total it published, all pods
	refused bool           // a delta Redis refused (need_full)
}

// syncSpy records the heartbeat calls (sync.lua: 7 keys) and can make the
// reply of the next call of a script (by its number of keys) get lost
// after the script ran.
type syncSpy struct {
	mu    sync.Mutex
	calls []syncCall
	lose  string // the number of keys of the script whose next reply is lost
}

var errLostReply = errors.New("reply lost (test)")

func (h *syncSpy) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *syncSpy) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	// a heartbeat is a pipeline: sync.lua, then its reads (store.Sync)
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if e := h.after(cmd, cmd.Err()); e != nil && err == nil {
				err = e
			}
		}
		return err
	}
}
func (h *syncSpy) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		return h.after(cmd, next(ctx, cmd))
	}
}

// after records cmd if it is a heartbeat that ran, and loses its reply if
// asked to; it returns cmd's error as the caller sees it.
func (h *syncSpy) after(cmd redis.Cmder, err error) error {
	keys := ""
	if cmd.Name() == "evalsha" || cmd.Name() == "eval" {
		keys = hotKeys(cmd.Args())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if keys == "7" && err == nil {
		// ARGV starts after the 7 keys: 12 kind, 15 the total, 16 npods,
		// then (pod, live, established) each (sync.lua's header)
		argv := cmd.Args()[3+7:]
		c := syncCall{kind: fmt.Sprint(argv[11]), pods: map[string]int{}}
		c.total, _ = strconv.Atoi(fmt.Sprint(argv[14]))
		n, _ := strconv.Atoi(fmt.Sprint(argv[15]))
		for i := 0; i < n; i++ {
			live, _ := strconv.Atoi(fmt.Sprint(argv[16+3*i+1]))
			c.pods[fmt.Sprint(argv[16+3*i])] = live
		}
		// the reply's stale slot (sync.lua): 2 for a refused delta
		if res, ok := cmd.(*redis.Cmd).Val().([]any); ok && len(res) == 6 {
			c.refused = fmt.Sprint(res[4]) == "2"
		}
		h.calls = append(h.calls, c)
	}
	if keys != "" && keys == h.lose && err == nil {
		h.lose = ""
		cmd.SetErr(errLostReply)
		return errLostReply
	}
	return err
}

// since returns the calls recorded after the first n.
func (h *syncSpy) since(n int) []syncCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]syncCall(nil), h.calls[n:]...)
}

func (h *syncSpy) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.calls)
}

func (h *syncSpy) loseNext(keys string) {
	h.mu.Lock()
	h.lose = keys
	h.mu.Unlock()
}

// deltaTracker is a granting tracker e1 of fleet chat (cap per pod, pods
// 10.0.0.1:80 ...) on a real redis-server, whose heartbeat calls spy sees.
func deltaTracker(t *testing.T, cap, pods int) (*tracker.Tracker, *syncSpy, *tracker.Metrics, *redistest.Server, *redis.Client) {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client()
	spy := &syncSpy{}
	rdb.AddHook(spy)
	addrs := make([]string, pods)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.%d.%d:80", i/200, i%200+1)
	}
	m := tracker.NewMetrics(prometheus.NewRegistry())
	tr, err := tracker.New(tracker.Config{InstanceID: "e1", Heartbeat: 100 * time.Millisecond, InstanceTTL: time.Second,
		EstablishTimeout: time.Minute, LeaseTTL: time.Minute, RedisTimeout: 5 * time.Second, Fallback: tracker.FallbackShare,
		Fleets: []fleets.Fleet{fleetCfg("chat", cap, addrs...)}}, store.NewStore(rdb, "wsgate"), tracker.WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	await.Granting(t, "tracker e1", tr, 30*time.Second)
	return tr, spy, m, srv, rdb
}

// truth is what a test holds through tracker e1: live and established per pod.
type truth struct {
	live, est map[string]int
	conns     map[string]tracker.Result
	estab     map[string]bool
}

func newTruth() *truth {
	return &truth{live: map[string]int{}, est: map[string]int{}, conns: map[string]tracker.Result{}, estab: map[string]bool{}}
}

func (h *truth) admit(t *testing.T, tr *tracker.Tracker) tracker.Result {
	t.Helper()
	r := admit(t, tr, "chat")
	if !r.Admitted || r.Fallback {
		t.Fatalf("admit through Redis: %+v", r)
	}
	h.conns[r.Conn] = r
	h.live[r.Pod]++
	return r
}

func (h *truth) establish(t *testing.T, tr *tracker.Tracker, r tracker.Result) {
	t.Helper()
	if err := tr.Establish(r.Conn); err != nil {
		t.Fatal(err)
	}
	h.estab[r.Conn] = true
	h.est[r.Pod]++
}

func (h *truth) release(t *testing.T, tr *tracker.Tracker, r tracker.Result) {
	t.Helper()
	release(t, tr, r.Conn)
	delete(h.conns, r.Conn)
	if h.live[r.Pod]--; h.live[r.Pod] == 0 {
		delete(h.live, r.Pod)
	}
	if h.estab[r.Conn] {
		delete(h.estab, r.Conn)
		if h.est[r.Pod]--; h.est[r.Pod] == 0 {
			delete(h.est, r.Pod)
		}
	}
}

// matches checks that Redis counts exactly h for e1 (inst:e1, pend:e1)
// and, e1 being the only instance, as every pod's load and, once e1
// heartbeated, as the summary's live count.
func (h *truth) matches(t *testing.T, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	k := store.NewStore(nil, "wsgate").Keys("chat")
	ints := func(m map[string]string) map[string]int {
		out := map[string]int{}
		for f, v := range m {
			out[f], _ = strconv.Atoi(v)
		}
		return out
	}
	inst := ints(rdb.HGetAll(ctx, k.Inst("e1")).Val())
	pend := ints(rdb.HGetAll(ctx, k.Pend("e1")).Val())
	wantPend := map[string]int{}
	for pod, n := range h.live {
		if n > h.est[pod] {
			wantPend[pod] = n - h.est[pod]
		}
	}
	if !maps.Equal(inst, h.live) || !maps.Equal(pend, wantPend) {
		t.Errorf("Redis counts e1 inst=%v pend=%v; want %v and %v", inst, pend, h.live, wantPend)
	}
	load := map[string]int{}
	for _, key := range []string{k.Avail(), k.Load()} {
		for _, z := range rdb.ZRangeWithScores(ctx, key, 0, -1).Val() {
			if z.Score != 0 {
				load[z.Member.(string)] = int(z.Score)
			}
		}
	}
	if !maps.Equal(load, h.live) {
		t.Errorf("Redis' load %v; want e1's %v", load, h.live)
	}
	// Right after e1's heartbeat, the total it published is the
	// summary's live count.
	total := 0
	for _, n := range h.live {
		total += n
	}
	if sum, err := store.NewStore(rdb, "wsgate").Summary(ctx, "chat", time.Now()); err != nil || sum.Live != int64(total) {
		t.Errorf("the summary counts %d live (%v); want e1's %d", sum.Live, err, total)
	}
}

// beat runs one heartbeat of tr and returns the calls it made.
func beat(t *testing.T, tr *tracker.Tracker, spy *syncSpy) []syncCall {
	t.Helper()
	n := spy.count()
	if err := tr.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	return spy.since(n)
}

func wantDelta(t *testing.T, calls []syncCall, pods map[string]int) {
	t.Helper()
	if len(calls) != 1 || calls[0].kind != "delta" || calls[0].refused || !maps.Equal(calls[0].pods, pods) {
		t.Fatalf("heartbeat calls %+v; want one delta sending %v", calls, pods)
	}
}

// A delta heartbeat sends only the pods whose counts moved since the last
// acknowledged one (PROTOCOL.md, "Delta heartbeats"), and Redis then
// counts what the tracker holds.
func TestDeltaHeartbeatSendsOnlyWhatMoved(t *testing.T) {
	tr, spy, m, _, rdb := deltaTracker(t, 1, 40)
	h := newTruth()
	wantDelta(t, beat(t, tr, spy), map[string]int{})

	var rs []tracker.Result
	for i := 0; i < 10; i++ {
		rs = append(rs, h.admit(t, tr))
	}
	wantDelta(t, beat(t, tr, spy), maps.Clone(h.live))
	h.matches(t, rdb)

	moved := map[string]int{}
	for _, r := range rs[:4] {
		h.establish(t, tr, r)
		moved[r.Pod] = 1
	}
	calls := beat(t, tr, spy)
	wantDelta(t, calls, moved)
	if calls[0].total != 10 {
		t.Errorf("the delta sending %d pods published a total of %d; want all 10 e1 holds", len(moved), calls[0].total)
	}
	h.matches(t, rdb)

	wantDelta(t, beat(t, tr, spy), map[string]int{})
	h.matches(t, rdb)

	// two ended: each pod is sent with 0 (it holds none there any more)
	h.release(t, tr, rs[0])
	h.release(t, tr, rs[5])
	wantDelta(t, beat(t, tr, spy), map[string]int{rs[0].Pod: 0, rs[5].Pod: 0})
	h.matches(t, rdb)

	// a release and an admission between two heartbeats: both pods
	h.release(t, tr, rs[1])
	r := h.admit(t, tr)
	want := map[string]int{rs[1].Pod: 0}
	want[r.Pod] = h.live[r.Pod]
	wantDelta(t, beat(t, tr, spy), want)
	h.matches(t, rdb)

	if n := testutil.ToFloat64(m.Heartbeats.WithLabelValues("chat", "delta")); n < 6 {
		t.Errorf("heartbeats_total{kind=delta} %v; want at least the 6 above", n)
	}
	if n := testutil.ToFloat64(m.Heartbeats.WithLabelValues("chat", "refused_delta")); n != 0 {
		t.Errorf("heartbeats_total{kind=refused_delta} %v; want 0", n)
	}
}

// When Redis' copy of the instance may differ from what the tracker's
// last acknowledged heartbeat left there, the delta is refused and the
// full heartbeat runs in the same Heartbeat: reaped, forgotten
// (--forget-instance, or a leave), a new epoch (Redis restarted empty).
// Without the base check in sync.lua the delta, which sends nothing,
// would leave the instance's connections uncounted after a reap or a
// forget.
func TestRefusedDeltaRestatesInTheSameHeartbeat(t *testing.T) {
	cases := []struct {
		name    string
		diverge func(t *testing.T, st *store.Store, srv *redistest.Server)
	}{
		{"reaped", func(t *testing.T, st *store.Store, srv *redistest.Server) {
			// its lease (a second) ends by Redis' clock: then it is reaped
			deadline := time.Now().Add(10 * time.Second)
			for {
				reaped, err := st.Reap(context.Background(), "chat", []string{"e1"})
				if err != nil {
					t.Fatal(err)
				}
				if len(reaped) == 1 {
					return
				}
				if time.Now().After(deadline) {
					t.Fatal("e1 was never reaped")
				}
				time.Sleep(10 * time.Millisecond) // Redis' clock: no event to await
			}
		}},
		{"left", func(t *testing.T, st *store.Store, srv *redistest.Server) {
			leaveAsE1(t, st)
		}},
		{"new epoch", func(t *testing.T, st *store.Store, srv *redistest.Server) {
			srv.Restart()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, spy, m, srv, rdb := deltaTracker(t, 2, 3)
			h := newTruth()
			for i := 0; i < 4; i++ {
				h.establish(t, tr, h.admit(t, tr))
			}
			beat(t, tr, spy)
			h.matches(t, rdb)
			c.diverge(t, store.NewStore(rdb, "wsgate"), srv)

			calls := beat(t, tr, spy)
			if len(calls) < 2 || calls[0].kind != "delta" || !calls[0].refused || calls[1].kind != "full" || !maps.Equal(calls[1].pods, h.live) {
				t.Fatalf("heartbeat calls %+v; want a refused delta, then a full one sending %v", calls, h.live)
			}
			h.matches(t, rdb)
			if n := testutil.ToFloat64(m.Heartbeats.WithLabelValues("chat", "refused_delta")); n != 1 {
				t.Errorf("heartbeats_total{kind=refused_delta} %v; want 1", n)
			}
			// and deltas again from there
			wantDelta(t, beat(t, tr, spy), map[string]int{})
			h.matches(t, rdb)
		})
	}
}

// A call whose reply was lost after it ran (a heartbeat, an admission)
// makes the next heartbeat full: Redis may count what the tracker does
// not know of.
func TestLostReplyMakesTheNextHeartbeatFull(t *testing.T) {
	for _, c := range []struct{ name, keys string }{{"heartbeat", "7"}, {"admission", "8"}} {
		t.Run(c.name, func(t *testing.T) {
			tr, spy, _, _, rdb := deltaTracker(t, 2, 3)
			h := newTruth()
			for i := 0; i < 3; i++ {
				h.admit(t, tr)
			}
			beat(t, tr, spy)
			spy.loseNext(c.keys)
			switch c.name {
			case "heartbeat":
				if err := tr.Heartbeat(context.Background()); err == nil {
					t.Fatal("a heartbeat whose reply was lost succeeded")
				}
			case "admission": // it ran in Redis; the tracker holds nothing of it
				if r := admit(t, tr, "chat"); r.Admitted && !r.Fallback {
					t.Fatalf("an admission whose reply was lost was admitted through Redis: %+v", r)
				} else if r.Admitted {
					h.conns[r.Conn] = r
					h.live[r.Pod]++
				}
			}
			calls := beat(t, tr, spy)
			if len(calls) == 0 || calls[0].kind != "full" || !maps.Equal(calls[0].pods, h.live) {
				t.Fatalf("heartbeat calls %+v; want a full one sending %v", calls, h.live)
			}
			h.matches(t, rdb)
			wantDelta(t, beat(t, tr, spy), map[string]int{})
		})
	}
}

// heartbeats_total counts a refused delta once, as refused_delta, and the
// full heartbeat that follows it as full: kind=delta counts only deltas
// Redis applied.
func TestRefusedDeltaIsCountedOnce(t *testing.T) {
	tr, spy, m, _, rdb := deltaTracker(t, 2, 3)
	h := newTruth()
	h.admit(t, tr)
	beat(t, tr, spy)
	leaveAsE1(t, store.NewStore(rdb, "wsgate"))
	get := func(kind string) float64 { return testutil.ToFloat64(m.Heartbeats.WithLabelValues("chat", kind)) }
	d0, f0, r0 := get("delta"), get("full"), get("refused_delta")
	if calls := beat(t, tr, spy); len(calls) != 2 {
		t.Fatalf("heartbeat after a leave: %+v; want the refused delta and a full one", calls)
	}
	if d, f, r := get("delta")-d0, get("full")-f0, get("refused_delta")-r0; d != 0 || f != 1 || r != 1 {
		t.Errorf("heartbeats_total moved by delta %v, full %v, refused_delta %v; want 0, 1, 1", d, f, r)
	}
}

// blockAdmits holds the first admit script call (9 keys) until release is
// closed.
type blockAdmits struct {
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (h *blockAdmits) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *blockAdmits) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *blockAdmits) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if (cmd.Name() == "evalsha" || cmd.Name() == "eval") && hotKeys(cmd.Args()) == "8" {
			h.once.Do(func() { close(h.started) })
			<-h.release
		}
		return next(ctx, cmd)
	}
}

// An admission that left the queue before it was sent (its caller's
// context ended while another call was in flight) changed nothing in
// Redis: the next heartbeat is still a delta.
func TestUnsentAdmissionKeepsTheDelta(t *testing.T) {
	tr, spy, _, _, rdb := deltaTracker(t, 5, 3)
	h := newTruth()
	h.admit(t, tr)
	beat(t, tr, spy)
	wantDelta(t, beat(t, tr, spy), map[string]int{})

	blk := &blockAdmits{started: make(chan struct{}), release: make(chan struct{})}
	rdb.AddHook(blk)
	var wg sync.WaitGroup
	wg.Add(1)
	var first tracker.Result
	go func() { // sent at once, held in flight by the hook
		defer wg.Done()
		var err error
		if first, err = tr.Admit(context.Background(), "chat"); err != nil {
			t.Error(err)
		}
	}()
	<-blk.started
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := tr.Admit(ctx, "chat"); done <- err }()
	tracker.AwaitQueuedAdmissions(tr, "chat", 1)
	cancel() // it leaves the queue: never sent
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the queued admission: %v; want context.Canceled", err)
	}
	close(blk.release)
	wg.Wait()
	if !first.Admitted {
		t.Fatalf("the admission in flight: %+v; want admitted", first)
	}
	h.conns[first.Conn] = first
	h.live[first.Pod]++
	calls := beat(t, tr, spy)
	if len(calls) != 1 || calls[0].kind != "delta" {
		t.Errorf("heartbeat after an admission that was never sent: %+v; want one delta", calls)
	}
	h.matches(t, rdb)
}

// leaveAsE1 has e1 leave fleet chat in Redis as its own leave would, with
// its seq there (a leave below it is stale: leave.lua).
func leaveAsE1(t *testing.T, st *store.Store) {
	t.Helper()
	seqs, err := st.Instances(context.Background(), "chat")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := st.Leave(context.Background(), store.LeaveRequest{Fleet: "chat", Instance: "e1", Seq: seqs["e1"]}); err != nil || !n {
		t.Fatalf("e1's leave: %v, %v; want it gone", n, err)
	}
}
