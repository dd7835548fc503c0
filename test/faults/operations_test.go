package faults

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/wsbackend"
	"github.com/wsgate/wsgate/tracker"
)

// echoAll checks that every held connection still carries messages: a
// configuration change must cut none of them.
func (h *harness) echoAll(held *conns, when string) {
	h.t.Helper()
	held.mu.Lock()
	cs := append([]*websocket.Conn(nil), held.cs...)
	held.mu.Unlock()
	for i, c := range cs {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		msg := []byte(fmt.Sprintf("%s %d", when, i))
		err := c.Write(ctx, websocket.MessageText, msg)
		var got []byte
		if err == nil {
			_, got, err = c.Read(ctx)
		}
		cancel()
		if err != nil || !bytes.Equal(got, msg) {
			h.t.Fatalf("%s: held connection %d no longer echoes: %v", when, i, err)
		}
	}
}

// awaitApplied waits until every tracker has applied n changes of the
// fleets file and returns how long the slowest took.
func (h *harness) awaitApplied(n float64, result string) time.Duration {
	h.t.Helper()
	start := time.Now()
	await.Until(h.t, fmt.Sprintf("every tracker applied %v changes (%s)", n, result), 30*time.Second, func() (bool, string) {
		var got []string
		ok := true
		for _, tp := range h.trackers {
			v, _ := tp.metric(`wsgate_tracker_config_reloads_total{result="` + result + `"}`)
			ok = ok && v >= n
			got = append(got, fmt.Sprintf("%s=%v", tp.id, v))
		}
		return ok, strings.Join(got, " ")
	})
	return time.Since(start)
}

// resetMax starts a new phase: each backend's most held is what it holds.
func (h *harness) resetMax() {
	for _, b := range h.backends {
		b.Max.Store(b.Live.Load())
	}
}

func (h *harness) checkMax(phase string, cap int64) {
	h.t.Helper()
	for _, b := range h.backends {
		if m := b.Max.Load(); m > cap {
			h.t.Errorf("%s: backend %s held %d at once, cap %d", phase, b.Addr, m, cap)
		}
	}
}

// fill dials through the gateways of tps (none: all) in turn until one is
// refused for capacity, keeping what is admitted; it returns how many were.
func (h *harness) fill(held *conns, tps ...*trackerProc) int {
	h.t.Helper()
	if len(tps) == 0 {
		tps = h.trackers
	}
	n := 0
	for i := 0; i < 100; i++ {
		r := h.dial(tps[i%len(tps)])
		if r.Reason == "capacity" {
			return n
		}
		if !held.add(r) {
			h.t.Fatalf("fill: dial %d: %s (%v)", i, r.Outcome(), r.Err)
		}
		n++
	}
	h.t.Fatalf("fill: 100 admitted and still no capacity rejection")
	return n
}

// TestLiveConfigChange changes the fleets file under load the way an
// operator does (lower and raise the cap, add a pod, change the rate, add
// a fleet, write a broken file): the trackers apply each change within
// their --config-check-interval plus a heartbeat, no held connection is
// cut, and no backend ever holds more than the higher of the caps in
// force.
func TestLiveConfigChange(t *testing.T) {
	if !trackerHasFlag("config-check-interval") {
		t.Skip("the tracker under test cannot reload its configuration")
	}
	t.Parallel()
	// Not a test of timeouts: a busy machine must not turn an admission
	// into redis_down.
	h := newHarness(t, options{backends: 2, redisTimeout: time.Second, admitTimeout: 5 * time.Second})
	extra, err := wsbackend.Start()
	if err != nil {
		t.Fatal(err)
	}
	other, err := wsbackend.Start()
	if err != nil {
		t.Fatal(err)
	}
	// Closed by the harness' cleanup, counted by checkMax.
	h.backends = append(h.backends, extra, other)
	pods := []string{h.backends[0].Addr, h.backends[1].Addr}
	h.settle()
	var held conns
	defer held.closeAll()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	if n := h.fill(&held); n != 4 {
		t.Fatalf("cap 2 on 2 pods admitted %d, want 4", n)
	}

	// Lower the cap below what the pods hold: nothing is cut, nothing
	// new is admitted until a pod is under the new cap.
	h.resetMax()
	changed := time.Now()
	h.writeFleets(fleetYAML(fleet, 1, pods...))
	took := h.awaitApplied(1, "applied")
	t.Logf("cap 2 -> 1 applied by every tracker %.1fs after the write", time.Since(changed).Seconds())
	h.echoAll(&held, "after lowering the cap")
	if l := h.backendLive(); l != 4 {
		t.Fatalf("after lowering the cap the backends hold %d, want the 4 they had", l)
	}
	if r := h.dial(h.trackers[0]); r.Conn != nil || r.Reason != "capacity" {
		t.Fatalf("dial over the lowered cap: %s, want capacity", r.Outcome())
	}
	held.closeAll()
	h.awaitDrained(20 * time.Second)
	if n := h.fill(&held); n != 2 {
		t.Fatalf("cap 1 on 2 pods admitted %d, want 2", n)
	}
	h.checkMax("cap 1", 2) // 2 while the old connections lasted, then 1
	h.checkMaxNow("cap 1", 1)

	// Raise the cap and add a pod, under churn.
	stop := h.churn(ctx, 4, 1, func() []*trackerProc { return h.trackers })
	h.resetMax()
	h.writeFleets(fleetYAML(fleet, 3, append(pods, extra.Addr)...))
	took = max(took, h.awaitApplied(2, "applied"))
	// The pod is placeable once a heartbeat wrote it to Redis.
	await.Until(h.t, "the added pod takes connections", 30*time.Second, func() (bool, string) {
		h.hold(&held, h.trackers[0], 1)
		return extra.Live.Load() > 0, fmt.Sprint(extra.Live.Load())
	})
	cancel()
	stop()
	// The churn's last connections are closed; filling before their
	// releases reached Redis would stop at a capacity they still take.
	h.awaitCounted(int64(held.len()), 20*time.Second)
	h.fill(&held)
	if l, want := h.backendLive(), int64(9); l != want {
		t.Errorf("cap 3 on 3 pods: the backends hold %d, want %d", l, want)
	}
	h.checkMax("cap 3 with the added pod", 3)
	h.echoAll(&held, "after raising the cap")

	// Change the rate: one new connection per second per Envoy.
	held.closeAll()
	h.awaitDrained(20 * time.Second)
	slow := strings.Replace(fleetYAML(fleet, 3, append(pods, extra.Addr)...), "ratePerSecond: 10000\n    burst: 10000", "ratePerSecond: 1\n    burst: 1", 1)
	h.writeFleets(slow)
	took = max(took, h.awaitApplied(3, "applied"))
	first, second := h.dial(h.trackers[0]), h.dial(h.trackers[0])
	held.add(first)
	held.add(second)
	if first.Conn == nil || second.Reason != "rate_limit" {
		t.Errorf("two dials in a row at 1/s: %s, %s; want admitted, rate_limit", first.Outcome(), second.Outcome())
	}

	// Add a fleet: served once Redis has state for it (a new epoch's
	// recovery wait, one --instance-ttl).
	h.writeFleets(slow, fleetYAML("game", 1, other.Addr))
	took = max(took, h.awaitApplied(4, "applied"))
	added := time.Now()
	await.Until(h.t, "the added fleet admits", h.o.instanceTTL*3+15*time.Second, func() (bool, string) {
		code, body := h.admitHTTP(h.trackers[1], "game")
		return code == http.StatusOK && body == other.Addr, fmt.Sprint(code, " ", body)
	})
	t.Logf("added fleet admitting %.1fs after every tracker applied it", time.Since(added).Seconds())

	// A broken file is refused; the running configuration stays.
	h.writeFleets("  - name: chat\n    maxConnectionsPerPod: 0\n")
	h.awaitApplied(1, "invalid")
	for _, tp := range h.trackers {
		if v, _ := tp.metric("wsgate_tracker_config_last_reload_successful"); v != 0 {
			t.Errorf("tracker %s: config_last_reload_successful = %v after a broken file, want 0", tp.id, v)
		}
	}
	// Its one slot is taken: still served means refused for capacity,
	// not an unknown fleet.
	if code, body := h.admitHTTP(h.trackers[0], "game"); code != http.StatusServiceUnavailable || body != "capacity" {
		t.Errorf("after a refused change, fleet game answers %d %q; want 503 capacity (still served, its slot taken)", code, body)
	}
	h.echoAll(&held, "after a broken file")
	t.Logf("slowest tracker to apply a change: %.2fs (check interval %s)", took.Seconds(), configCheck)
	held.closeAll()
}

// checkMaxNow fails if a backend holds more than cap right now.
func (h *harness) checkMaxNow(phase string, cap int64) {
	h.t.Helper()
	for _, b := range h.backends {
		if l := b.Live.Load(); l > cap {
			h.t.Errorf("%s: backend %s holds %d, cap %d", phase, b.Addr, l, cap)
		}
	}
}

// admitHTTP asks tp's admission API directly (the fleet need not be the
// gateway's) and returns the status and the pod (admitted) or the reason.
func (h *harness) admitHTTP(tp *trackerProc, fleet string) (int, string) {
	ctx, cancel := rctx()
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+tp.listen+"/v1/admit", strings.NewReader(`{"fleet":"`+fleet+`"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, resp.Header.Get(tracker.HeaderUpstream)
	}
	return resp.StatusCode, resp.Header.Get(tracker.HeaderReason)
}

// term is SIGTERM; exitedWithin waits for the process to end.
func (tp *trackerProc) term() { tp.signal(syscall.SIGTERM) }

func (tp *trackerProc) awaitExit(d time.Duration) {
	tp.h.t.Helper()
	tp.mu.Lock()
	exited := tp.exited
	tp.mu.Unlock()
	select {
	case <-exited:
	case <-time.After(d):
		tp.h.t.Fatalf("tracker %s still running %s after SIGTERM:\n%s", tp.id, d, tp.logTail(20))
	}
	tp.mu.Lock()
	tp.cmd = nil
	tp.mu.Unlock()
}

func (h *harness) instances() map[string]uint64 {
	h.t.Helper()
	ctx, cancel := rctx()
	defer cancel()
	ids, err := store.NewStore(h.rdb, "wsgate").Instances(ctx, fleet)
	if err != nil {
		h.t.Fatal(err)
	}
	return ids
}

// shutdown calls tp's /shutdown as the kubelet runs the Envoy container's
// preStop hook; the channel gets the answer once it comes.
func (tp *trackerProc) shutdown() <-chan string {
	out := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + tp.shutAddr + "/shutdown")
		if err != nil {
			out <- err.Error()
			return
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		out <- fmt.Sprint(resp.StatusCode, " ", strings.TrimSpace(b.String()))
	}()
	return out
}

// TestGracefulTermination terminates a gateway+tracker pod that holds
// connections, as Kubernetes does: preStop, then SIGTERM to Envoy, then to
// the tracker (a native sidecar stops last) — or, on a cluster without
// native sidecars, SIGTERM to the tracker while Envoy still drains. New
// dials go to the other gateway, the held ones keep working and stay
// counted until they close (the other tracker cannot take their slots),
// and the instance is gone from Redis as soon as the last one ended,
// without waiting for its lease.
func TestGracefulTermination(t *testing.T) {
	if !trackerHasFlag("shutdown-listen") {
		t.Skip("the tracker under test has no graceful shutdown")
	}
	t.Parallel()
	for _, sidecar := range []bool{true, false} {
		name := map[bool]string{true: "native-sidecar", false: "sigterm-first"}[sidecar]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, options{backends: 2, instanceTTL: 20 * time.Second, redisTimeout: time.Second, admitTimeout: 5 * time.Second})
			h.settle()
			a, b := h.tracker("A"), h.tracker("B")
			var heldA, heldB conns
			defer heldA.closeAll()
			defer heldB.closeAll()
			if n := h.holdAll(&heldA, a, 2); n != 2 {
				t.Fatalf("A admitted %d of 2", n)
			}
			h.hold(&heldB, b, 1)

			var answered <-chan string
			if sidecar {
				answered = a.shutdown()
				await.Until(h.t, "A not ready", 10*time.Second, func() (bool, string) {
					resp, err := http.Get("http://" + a.telem + "/readyz")
					if err != nil {
						return false, err.Error()
					}
					resp.Body.Close()
					return resp.StatusCode == http.StatusServiceUnavailable, resp.Status
				})
			} else {
				a.term()
				await.Until(h.t, "A draining", 10*time.Second, func() (bool, string) {
					r := h.dial(a)
					if r.Conn != nil {
						heldA.add(r)
					}
					return r.Reason == "draining", r.Outcome()
				})
			}
			// Draining, or (after Envoy drained its listeners) refused.
			if r := h.dial(a); r.Conn != nil || (r.Reason != "draining" && r.Status != 0) {
				heldA.add(r)
				t.Fatalf("dial through the draining gateway: %s, want draining or refused", r.Outcome())
			}
			// The other gateway takes the new clients, up to the cap: A's
			// two stay counted while they last.
			// (A dial of the wait above may have been admitted before the
			// signal took effect: A then holds 3.)
			h.resetMax()
			free := 4 - heldA.len() - heldB.len()
			if n := h.fill(&heldB, b); n != free {
				t.Errorf("B admitted %d while A drains, want %d (4 slots, A's %d and B's %d taken)", n, free, heldA.len(), heldB.len()-n)
			}
			h.echoAll(&heldA, "while A drains")
			if _, ok := h.instances()["A"]; !ok {
				t.Fatal("A left Redis while its Envoy still carries connections")
			}
			select {
			case got := <-answered:
				t.Fatalf("/shutdown answered while connections remain: %s", got)
			default:
			}
			heldA.closeAll()
			if sidecar {
				select {
				case got := <-answered:
					if got != "200 drained" {
						t.Errorf("/shutdown answered %q, want 200 drained", got)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("/shutdown did not answer after the last connection ended")
				}
				// Kubernetes stops Envoy, then the sidecar.
				a.closeGateway()
				a.term()
			}
			a.awaitExit(30 * time.Second)
			if _, ok := h.instances()["A"]; ok {
				t.Errorf("A still in Redis when its tracker exited; want it gone at once, not after its lease")
			}
			// Its slots are free for B at once.
			want := 4 - heldB.len()
			if n := h.fill(&heldB, b); n != want {
				t.Errorf("B admitted %d after A left, want the %d slots A freed", n, want)
			}
			h.checkMax("graceful termination", 2)
			heldB.closeAll()
		})
	}
}
