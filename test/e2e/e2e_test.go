package e2e

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/wsdial"
)

// TestGlobalCapAcrossGateways: many clients dial through both gateways at
// once; the backends themselves never count more than the cap, every
// admitted tunnel carries data to the pod the tracker chose, the surplus is
// refused with 503 capacity and a Retry-After, and a spoofed upstream
// header changes nothing.
func TestGlobalCapAcrossGateways(t *testing.T) {
	h := newHarness(t, harnessOptions{cap: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const clients = 40 // 12 slots
	results := make([]wsdial.Result, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Every client asks for the first pod; the filter must ignore it.
			results[i] = wsdial.Dial(ctx, h.nodes[i%2].url, spoofed(h.backends[0].Addr))
			if results[i].Err == nil {
				results[i].Err = wsdial.Ping(ctx, results[i].Conn)
			}
		}()
	}
	wg.Wait()
	var admitted []*websocket.Conn
	for i, r := range results {
		switch {
		case r.Conn != nil && r.Err == nil:
			admitted = append(admitted, r.Conn)
		case r.Status == 503 && r.Reason == "capacity" && r.RetryAfter == "3":
		default:
			t.Errorf("client %d: status %d reason %q retry-after %q err %v", i, r.Status, r.Reason, r.RetryAfter, r.Err)
		}
	}
	if len(admitted) != 12 {
		t.Fatalf("admitted %d connections, want exactly 3 pods x cap 4 = 12", len(admitted))
	}
	for _, b := range h.backends {
		if got := b.Max.Load(); got > 4 {
			t.Errorf("backend %s held %d connections at once, cap is 4", b.Addr, got)
		}
		if got := b.Live.Load(); got != 4 {
			t.Errorf("backend %s holds %d connections, want 4 (spoofed header must not steer)", b.Addr, got)
		}
	}
	await.Until(t, "redis live count = 12", 20*time.Second, func() (bool, string) {
		n := h.live(t)
		return n == 12, strconv.FormatInt(n, 10)
	})

	// Release: a closed connection's slot is free again within 2 s.
	closed := time.Now()
	admitted[0].Close(websocket.StatusNormalClosure, "")
	await.Until(t, "slot freed after close", 20*time.Second, func() (bool, string) {
		n := h.counted(t)
		return n == 11, strconv.FormatInt(n, 10)
	})
	t.Logf("release seen in Redis %s after close", time.Since(closed).Round(time.Millisecond))
	r := wsdial.Dial(ctx, h.nodes[1].url, nil)
	if r.Err != nil {
		t.Fatalf("dial into the freed slot: status %d reason %q: %v", r.Status, r.Reason, r.Err)
	}
	admitted[0] = r.Conn
	for _, c := range admitted {
		c.Close(websocket.StatusNormalClosure, "")
	}
	await.Until(t, "all slots free", 20*time.Second, func() (bool, string) {
		n, _ := h.backendLive()
		c, l := h.counted(t), h.live(t)
		return n == 0 && c == 0 && l == 0, fmt.Sprintf("backends %d redis %d (summary %d)", n, c, l)
	})
}

// TestRateLimitReachesClient: one instance admits at most its rate; the
// client sees 429 rate_limit with a Retry-After, the other gateway is not
// affected.
func TestRateLimitReachesClient(t *testing.T) {
	h := newHarness(t, harnessOptions{cap: 100, rate: 0.5, burst: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ok, limited int
	for range 4 {
		r := wsdial.Dial(ctx, h.nodes[0].url, nil)
		switch {
		case r.Err == nil:
			ok++
			defer r.Conn.CloseNow()
		case r.Status == 429 && r.Reason == "rate_limit" && r.RetryAfter != "":
			limited++
		default:
			t.Fatalf("status %d reason %q retry-after %q: %v", r.Status, r.Reason, r.RetryAfter, r.Err)
		}
	}
	if ok != 2 || limited != 2 {
		t.Fatalf("gateway a: %d admitted, %d rate-limited; want burst 2 then 429", ok, limited)
	}
	r := wsdial.Dial(ctx, h.nodes[1].url, nil)
	if r.Err != nil {
		t.Fatalf("gateway b has its own bucket, got status %d reason %q", r.Status, r.Reason)
	}
	r.Conn.CloseNow()
}
