// Package wsbackend is a backend pod for tests and benchmarks: a WebSocket
// server on loopback that echoes every message and counts the connections
// it holds itself, independent of anything wsgate says.
package wsbackend

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/coder/websocket"
)

// Backend is one pod. Live is the connections it holds now, Max the most it
// ever held at once, Seen how many it ever accepted.
type Backend struct {
	Addr            string
	Live, Max, Seen atomic.Int64

	srv    *http.Server
	cancel context.CancelFunc
	conns  sync.WaitGroup
}

// Start serves a Backend on a free loopback port until Close.
func Start() (*Backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("backend listen: %w", err)
	}
	// Close does not wait for hijacked WebSockets: cancelling the base
	// context ends them.
	ctx, cancel := context.WithCancel(context.Background())
	b := &Backend{Addr: ln.Addr().String(), cancel: cancel}
	b.srv = &http.Server{BaseContext: func(net.Listener) context.Context { return ctx }, Handler: http.HandlerFunc(b.serve)}
	go func() { _ = b.srv.Serve(ln) }()
	return b, nil
}

func (b *Backend) serve(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	b.conns.Add(1)
	defer b.conns.Done()
	defer c.CloseNow() // before Done: Close returns with every socket closed
	n := b.Live.Add(1)
	defer b.Live.Add(-1)
	b.Seen.Add(1)
	for m := b.Max.Load(); n > m && !b.Max.CompareAndSwap(m, n); m = b.Max.Load() {
	}
	// Echo until the client or Close ends it; reading is also what answers
	// the client's close frame.
	for {
		typ, msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, msg); err != nil {
			return
		}
	}
}

// Close stops the server and waits until every connection has ended.
func (b *Backend) Close() {
	_ = b.srv.Close()
	b.cancel()
	b.conns.Wait()
}
