package tracker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// gatedSend is a send whose calls block until the test lets each one go;
// it records the requests of every call.
type gatedSend struct {
	mu    sync.Mutex
	calls [][]int
	enter chan []int    // each call's requests, as it starts
	leave chan struct{} // one per call allowed to return
}

func newGatedSend() *gatedSend {
	return &gatedSend{enter: make(chan []int, 100), leave: make(chan struct{}, 100)}
}

func (g *gatedSend) send(ctx context.Context, reqs []int) ([]int, error) {
	g.mu.Lock()
	g.calls = append(g.calls, slices.Clone(reqs))
	g.mu.Unlock()
	g.enter <- slices.Clone(reqs)
	select {
	case <-g.leave:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res := make([]int, len(reqs))
	for i, r := range reqs {
		res[i] = r * 10
	}
	return res, nil
}

// queued checks that n requests wait in b's queue, once every goroutine
// of the test's bubble is blocked (synctest: nothing is left to run).
func queued[Req, Res any](t *testing.T, b *batcher[Req, Res], n int) {
	t.Helper()
	synctest.Wait()
	b.mu.Lock()
	got := len(b.queue)
	b.mu.Unlock()
	if got != n {
		t.Fatalf("%d requests queued, want %d", got, n)
	}
}

// The calls that arrive while one is in flight go together in the next
// one, each caller gets its own result, and the first caller does not wait
// for the batch behind it.
func TestBatcherGroupsWhatArrivesDuringACall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedSend()
		b := &batcher[int, int]{max: 64, timeout: time.Minute, send: g.send}
		ctx := context.Background()

		first := make(chan int)
		go func() {
			r, err := b.do(ctx, 1, time.Now().Add(time.Minute))
			if err != nil {
				t.Error(err)
			}
			first <- r
		}()
		if got := <-g.enter; !slices.Equal(got, []int{1}) {
			t.Fatalf("first call %v, want [1]", got)
		}
		var wg sync.WaitGroup
		results := make([]int, 5)
		for i := range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := b.do(ctx, 2+i, time.Now().Add(time.Minute))
				if err != nil {
					t.Error(err)
				}
				results[i] = r
			}()
		}
		queued(t, b, 5)
		g.leave <- struct{}{}
		if r := <-first; r != 10 {
			t.Errorf("first result %d, want 10", r)
		}
		second := <-g.enter // sent by another goroutine: the first caller has returned
		slices.Sort(second)
		if !slices.Equal(second, []int{2, 3, 4, 5, 6}) {
			t.Errorf("second call %v, want the five that queued", second)
		}
		g.leave <- struct{}{}
		wg.Wait()
		for i, r := range results {
			if r != (2+i)*10 {
				t.Errorf("caller %d got %d, want %d", i, r, (2+i)*10)
			}
		}
		if err := b.wait(ctx); err != nil {
			t.Fatal(err)
		}
		if len(g.calls) != 2 {
			t.Errorf("%d calls for 6 requests, want 2", len(g.calls))
		}
	})
}

// A caller that leaves while queued is not sent; one that leaves while its
// call is in flight gets its context's error, the others their results.
func TestBatcherCallerLeaving(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedSend()
		b := &batcher[int, int]{max: 64, timeout: time.Minute, send: g.send}
		bg := context.Background()
		go func() { _, _ = b.do(bg, 1, time.Now().Add(time.Minute)) }()
		<-g.enter

		left, leave := context.WithCancel(bg)
		errc := make(chan error)
		go func() { _, err := b.do(left, 2, time.Now().Add(time.Minute)); errc <- err }()
		stay := make(chan int)
		go func() { r, _ := b.do(bg, 3, time.Now().Add(time.Minute)); stay <- r }()
		queued(t, b, 2)
		leave()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("queued caller that left: %v, want context.Canceled", err)
		}
		queued(t, b, 1)
		g.leave <- struct{}{}
		if got := <-g.enter; !slices.Equal(got, []int{3}) {
			t.Errorf("second call %v, want only the caller that stayed", got)
		}
		g.leave <- struct{}{}
		if r := <-stay; r != 30 {
			t.Errorf("result %d, want 30", r)
		}
	})
}

// post does not wait; what is posted during a call goes in the next one,
// at most max per call, and wait returns once all of it was sent.
func TestBatcherPost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedSend()
		b := &batcher[int, int]{max: 3, timeout: time.Minute, send: g.send}
		b.post(1)
		<-g.enter
		for i := range 5 {
			b.post(2 + i)
		}
		done := make(chan error)
		go func() { done <- b.wait(context.Background()) }()
		for range 3 {
			g.leave <- struct{}{}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		want := [][]int{{1}, {2, 3, 4}, {5, 6}}
		if len(g.calls) != len(want) {
			t.Fatalf("calls %v, want %v", g.calls, want)
		}
		for i := range want {
			if !slices.Equal(g.calls[i], want[i]) {
				t.Errorf("call %d sent %v, want %v", i, g.calls[i], want[i])
			}
		}
	})
}

// A queued caller waits for its call no longer than its deadline, and is
// then not sent.
func TestBatcherDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedSend()
		b := &batcher[int, int]{max: 64, timeout: time.Minute, send: g.send}
		bg := context.Background()
		go func() { _, _ = b.do(bg, 1, time.Now().Add(time.Minute)) }()
		<-g.enter
		if _, err := b.do(bg, 2, time.Now().Add(10*time.Millisecond)); !errors.Is(err, errQueued) {
			t.Fatalf("queued past its deadline: %v, want errQueued", err)
		}
		g.leave <- struct{}{}
		if err := b.wait(bg); err != nil {
			t.Fatal(err)
		}
		if len(g.calls) != 1 {
			t.Errorf("calls %v: the caller past its deadline was sent", g.calls)
		}
	})
}

// With a linger, posted requests wait for another call to take them, and
// go alone once the linger is over; a full call's worth goes at once, and
// wait does not wait for the linger.
func TestBatcherLinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedSend()
		g.leave <- struct{}{}
		b := &batcher[int, int]{max: 3, timeout: time.Minute, send: g.send, linger: time.Millisecond}

		// Alone: sent when the linger ends, not before.
		start := time.Now()
		b.post(1)
		queued(t, b, 1)
		if got := <-g.enter; !slices.Equal(got, []int{1}) || time.Since(start) != time.Millisecond {
			t.Fatalf("sent %v after %v; want [1] after the 1ms linger", got, time.Since(start))
		}
		if err := b.wait(context.Background()); err != nil {
			t.Fatal(err)
		}

		// Taken by another call before the linger ends: not sent by b, and
		// what is posted while that call is out lingers in turn.
		b.post(2)
		b.post(3)
		if got := b.take(nil); !slices.Equal(got, []int{2, 3}) {
			t.Fatalf("take = %v, want [2 3]", got)
		}
		b.post(4)
		time.Sleep(10 * time.Millisecond)
		synctest.Wait()
		if len(g.calls) != 1 {
			t.Fatalf("b sent %v while another call carried its requests", g.calls)
		}
		b.finish()
		if got := b.take(nil); !slices.Equal(got, []int{4}) {
			t.Fatalf("take after finish = %v, want [4] (it lingered)", got)
		}
		b.finish()

		// A full call goes at once.
		g.leave <- struct{}{}
		start = time.Now()
		for i := range 3 {
			b.post(10 + i)
		}
		if got := <-g.enter; !slices.Equal(got, []int{10, 11, 12}) || time.Since(start) != 0 {
			t.Fatalf("sent %v after %v; want [10 11 12] at once", got, time.Since(start))
		}
		if err := b.wait(context.Background()); err != nil {
			t.Fatal(err)
		}

		// wait sends a lingering queue at once.
		g.leave <- struct{}{}
		b.post(20)
		start = time.Now()
		if err := b.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := g.calls[len(g.calls)-1]; !slices.Equal(got, []int{20}) || time.Since(start) != 0 {
			t.Fatalf("wait: last call %v after %v; want [20] at once", got, time.Since(start))
		}
		<-g.enter
		queued(t, b, 0)
	})
}

// take hands nothing over while a call of the batcher's own is out: that
// call's successor sends it, in order.
func TestBatcherTakeWhileBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedSend()
		b := &batcher[int, int]{max: 3, timeout: time.Minute, send: g.send, linger: time.Millisecond}
		b.post(1)
		<-g.enter // sent after the linger, now out
		b.post(2)
		if got := b.take(nil); got != nil {
			t.Fatalf("take while a call is out = %v, want nothing", got)
		}
		g.leave <- struct{}{}
		g.leave <- struct{}{}
		if got := <-g.enter; !slices.Equal(got, []int{2}) {
			t.Fatalf("next call %v, want [2]", got)
		}
		if err := b.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

// take leaves a request that keep asks for in the queue until its own
// linger is over, and takes the others; what it leaves goes when the
// linger ends, as if never offered.
func TestBatcherTakeKeepsYoungRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedSend()
		g.leave <- struct{}{}
		b := &batcher[int, int]{max: 4, timeout: time.Minute, send: g.send, linger: 5 * time.Millisecond}
		odd := func(r int) bool { return r%2 == 1 }
		b.post(1)
		time.Sleep(2 * time.Millisecond)
		b.post(2)
		b.post(3)
		if got := b.take(odd); !slices.Equal(got, []int{2}) {
			t.Fatalf("take = %v, want [2]: 1 and 3 are kept for their linger", got)
		}
		b.finish()
		time.Sleep(3 * time.Millisecond) // 1 is 5ms old, 3 is 3ms old
		if got := b.take(odd); !slices.Equal(got, []int{1}) {
			t.Fatalf("take = %v, want [1], whose linger is over", got)
		}
		b.finish()
		if got := b.take(func(int) bool { return true }); got != nil {
			t.Fatalf("take = %v, want nothing: 3 is still young", got)
		}
		start := time.Now()
		if got := <-g.enter; !slices.Equal(got, []int{3}) || time.Since(start) != 5*time.Millisecond {
			t.Fatalf("sent %v after %v; want [3] when the linger armed at the last finish ends", got, time.Since(start))
		}
		if err := b.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}
