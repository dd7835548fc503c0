package tracker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// batcher turns the calls of many goroutines into fewer Redis script calls
// (group commit): a call that finds none in flight is sent at once, from
// the caller's goroutine, so an idle tracker adds no wait; the calls that
// come while one is in flight go together in the next one, sent as soon as
// it returns. Under load a batch holds what arrived during one round trip,
// so Redis' cost per call (its syscalls, the script's setup and fence) is
// shared, and the batches grow when Redis is slower (PROTOCOL.md,
// "Batches").
//
// A fleet has two: admits (do: the caller waits for its answer) and
// releases (post: nobody waits), coupled by take and finish, with which an
// admit call carries the queued releases. They are not one queue of
// operations per fleet on purpose: an admit call and a release call of
// one fleet may be in flight together (take hands nothing over while the
// releases' own call is out, and the admission goes on without them),
// where one queue would hold every admission behind a call that carries
// only releases; and which call carries which release, with the linger
// and the spare releases kept back for reuse, is what the tests of
// batchstore_test.go and reuse_test.go pin. One queue would change both.
type batcher[Req, Res any] struct {
	max     int                 // most requests per call
	timeout time.Duration       // each call's own deadline
	size    prometheus.Observer // requests per call
	// send makes one call for reqs; without an error it returns one result
	// per request, in order (none for requests that were posted).
	send func(ctx context.Context, reqs []Req) ([]Res, error)
	// linger: posted requests that find no call in flight, fewer than
	// max, wait this long for a call of another batcher to carry them
	// (take) before they go alone. 0: at once.
	linger time.Duration

	mu    sync.Mutex
	busy  bool          // a call is in flight
	idle  chan struct{} // closed when busy ends
	queue []*waiter[Req, Res]
	timer *time.Timer // the linger, while armed
	armed uint64      // counts the lingers armed: a stale one's timer does nothing
}

type waiter[Req, Res any] struct {
	req    Req
	res    Res
	err    error
	done   chan struct{} // closed when res and err are set; nil for post
	posted time.Time     // when post queued it
}

// errUnsent: the request was never sent, so Redis cannot have acted on
// it (unlike a call whose reply did not come).
var errUnsent = errors.New("not sent")

// errQueued: a request waited in the queue, behind calls in flight, past
// its deadline and was not sent. Redis did not fail: it is slow.
var errQueued = fmt.Errorf("queued behind calls in flight: %w", errUnsent)

// do sends req, alone or in a batch, and returns its result. A request
// that finds no call in flight is sent at once on ctx, bounded by
// deadline. One that must queue waits until deadline at most (then
// errQueued: it is not sent); once sent, it waits for its call, which has
// a deadline of its own. When ctx ends first, do returns ctx's error: a
// request still queued is not sent (the error wraps errUnsent too), one
// in flight may still take effect.
func (b *batcher[Req, Res]) do(ctx context.Context, req Req, deadline time.Time) (Res, error) {
	w := &waiter[Req, Res]{req: req, done: make(chan struct{})}
	b.mu.Lock()
	if !b.busy {
		b.start()
		b.mu.Unlock()
		cctx, cancel := context.WithDeadline(ctx, deadline)
		b.call(cctx, []*waiter[Req, Res]{w})
		cancel()
		b.run(nil, true)
		return w.res, w.err
	}
	b.queue = append(b.queue, w)
	b.mu.Unlock()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var zero Res
	select {
	case <-w.done:
		return w.res, w.err
	case <-ctx.Done():
		if b.unqueue(w) {
			return zero, fmt.Errorf("%w: %w", ctx.Err(), errUnsent)
		}
		return zero, ctx.Err()
	case <-timer.C:
		if !b.unqueue(w) { // sent meanwhile: its call decides
			select {
			case <-w.done:
				return w.res, w.err
			case <-ctx.Done():
				return zero, ctx.Err()
			}
		}
		return zero, errQueued
	}
}

// unqueue takes w out of the queue; false when it was sent already.
func (b *batcher[Req, Res]) unqueue(w *waiter[Req, Res]) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.Index(b.queue, w)
	if i < 0 {
		return false
	}
	b.queue = slices.Delete(b.queue, i, i+1)
	return true
}

// post queues req without waiting for it; send's results go nowhere, so
// send must act on them itself.
func (b *batcher[Req, Res]) post(req Req) {
	b.mu.Lock()
	b.queue = append(b.queue, &waiter[Req, Res]{req: req, posted: time.Now()})
	if b.busy || b.lingerLocked() {
		b.mu.Unlock()
		return
	}
	b.start()
	b.mu.Unlock()
	go b.run(nil, false)
}

// lingerLocked arms the linger for what is queued, unless there is none
// or the queue fills a call; it reports whether the queue now waits.
// b.mu is held and no call is in flight.
func (b *batcher[Req, Res]) lingerLocked() bool {
	if b.linger <= 0 || len(b.queue) >= b.max {
		return false
	}
	if b.timer == nil {
		b.armed++
		armed := b.armed
		b.timer = time.AfterFunc(b.linger, func() { b.lingered(armed) })
	}
	return true
}

// lingered sends what is queued once the linger armed as armed is over,
// if nothing took it meanwhile.
func (b *batcher[Req, Res]) lingered(armed uint64) {
	b.mu.Lock()
	if armed != b.armed || b.busy || len(b.queue) == 0 {
		b.mu.Unlock()
		return
	}
	b.disarmLocked()
	b.start()
	b.mu.Unlock()
	b.run(nil, false)
}

func (b *batcher[Req, Res]) disarmLocked() {
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	b.armed++
}

// take hands what is posted (up to max) to a call of another batcher
// about to be sent, when no call of b's is in flight; nil when there is
// none. A request for which keep says true stays queued until its linger
// is over: it may still be of use where it is (reuse). b counts as busy
// until finish, which the taker calls once its call returned: an ordering
// like b's own calls.
func (b *batcher[Req, Res]) take(keep func(Req) bool) []Req {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.busy || len(b.queue) == 0 {
		return nil
	}
	var reqs []Req
	left := b.queue[:0]
	for _, w := range b.queue {
		if len(reqs) == b.max || (keep != nil && keep(w.req) && time.Since(w.posted) < b.linger) {
			left = append(left, w)
			continue
		}
		reqs = append(reqs, w.req)
	}
	clear(b.queue[len(left):])
	b.queue = left
	if len(reqs) == 0 {
		return nil
	}
	b.disarmLocked()
	b.start()
	if b.size != nil {
		b.size.Observe(float64(len(reqs)))
	}
	return reqs
}

// finish ends the call that carried what take returned: what was posted
// meanwhile lingers, or goes at once when it fills a call.
func (b *batcher[Req, Res]) finish() {
	b.mu.Lock()
	if len(b.queue) == 0 || b.lingerLocked() {
		b.busy = false
		close(b.idle)
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	go b.run(nil, false)
}

// start marks a call in flight; b.mu is held.
func (b *batcher[Req, Res]) start() {
	b.busy = true
	b.idle = make(chan struct{})
}

// wait returns once nothing is queued or in flight (a lingering queue is
// sent at once), or when ctx ends.
func (b *batcher[Req, Res]) wait(ctx context.Context) error {
	for {
		b.mu.Lock()
		if !b.busy && len(b.queue) > 0 { // lingering: no more waiting
			b.disarmLocked()
			b.start()
			go b.run(nil, false)
		}
		busy, idle := b.busy, b.idle
		b.mu.Unlock()
		if !busy {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// run sends batch, then what queued meanwhile, batch after batch, each
// call with a deadline of its own. A caller of do (handoff) returns as
// soon as its own call is back: the batches after it go on in another
// goroutine.
func (b *batcher[Req, Res]) run(batch []*waiter[Req, Res], handoff bool) {
	for {
		sent := len(batch) > 0
		if sent {
			ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
			b.call(ctx, batch)
			cancel()
		}
		b.mu.Lock()
		// After a call, what queued meanwhile may linger; run(nil) is
		// told to send.
		if len(b.queue) == 0 || (sent && b.lingerLocked()) {
			b.busy = false
			close(b.idle)
			b.mu.Unlock()
			return
		}
		n := min(len(b.queue), b.max)
		batch = slices.Clone(b.queue[:n])
		b.queue = slices.Delete(b.queue, 0, n)
		b.mu.Unlock()
		if handoff {
			go b.run(batch, false)
			return
		}
	}
}

func (b *batcher[Req, Res]) call(ctx context.Context, batch []*waiter[Req, Res]) {
	reqs := make([]Req, len(batch))
	for i, w := range batch {
		reqs[i] = w.req
	}
	if b.size != nil {
		b.size.Observe(float64(len(reqs)))
	}
	res, err := b.send(ctx, reqs)
	for i, w := range batch {
		switch {
		case err != nil:
			w.err = err
		case i < len(res):
			w.res = res[i]
		}
		if w.done != nil {
			close(w.done)
		}
	}
}
