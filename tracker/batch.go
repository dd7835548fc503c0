package tracker

import (
	"context"
	"errors"
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
type batcher[Req, Res any] struct {
	max     int                 // most requests per call
	timeout time.Duration       // each call's own deadline
	size    prometheus.Observer // requests per call
	// send makes one call for reqs; without an error it returns one result
	// per request, in order (none for requests that were posted).
	send func(ctx context.Context, reqs []Req) ([]Res, error)

	mu    sync.Mutex
	busy  bool          // a call is in flight
	idle  chan struct{} // closed when busy ends
	queue []*waiter[Req, Res]
}

type waiter[Req, Res any] struct {
	req  Req
	res  Res
	err  error
	done chan struct{} // closed when res and err are set; nil for post
}

// errQueued: a request waited in the queue, behind calls in flight, past
// its deadline and was not sent. Redis did not fail: it is slow.
var errQueued = errors.New("queued behind calls in flight")

// do sends req, alone or in a batch, and returns its result. A request
// that finds no call in flight is sent at once on ctx, bounded by
// deadline. One that must queue waits until deadline at most (then
// errQueued: it is not sent); once sent, it waits for its call, which has
// a deadline of its own. When ctx ends first, do returns ctx's error: a
// request still queued is not sent, one in flight may still take effect.
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
		b.unqueue(w)
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
	b.queue = append(b.queue, &waiter[Req, Res]{req: req})
	if b.busy {
		b.mu.Unlock()
		return
	}
	b.start()
	b.mu.Unlock()
	go b.run(nil, false)
}

// start marks a call in flight; b.mu is held.
func (b *batcher[Req, Res]) start() {
	b.busy = true
	b.idle = make(chan struct{})
}

// wait returns once every request queued before it has been sent and its
// call has returned, or when ctx ends.
func (b *batcher[Req, Res]) wait(ctx context.Context) error {
	b.mu.Lock()
	busy, idle := b.busy, b.idle
	b.mu.Unlock()
	if !busy {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run sends batch, then what queued meanwhile, batch after batch, each
// call with a deadline of its own. A caller of do (handoff) returns as
// soon as its own call is back: the batches after it go on in another
// goroutine.
func (b *batcher[Req, Res]) run(batch []*waiter[Req, Res], handoff bool) {
	for {
		if len(batch) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
			b.call(ctx, batch)
			cancel()
		}
		b.mu.Lock()
		if len(b.queue) == 0 {
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
