package e2e

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsgate/wsgate/envoy/gateway"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/kedatest"
	"github.com/wsgate/wsgate/test/wsdial"
)

// TestScalerFollowsConnectionsAndRejections polls the scaler through
// KEDA's generated client while real connections come and go.
func TestScalerFollowsConnectionsAndRejections(t *testing.T) {
	h := newHarness(t, harnessOptions{cap: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waitMetric := func(name string, want func(float64) bool, what string) {
		t.Helper()
		await.Until(t, what, 30*time.Second, func() (bool, string) {
			v, err := kedatest.Metric(ctx, h.keda, "chat", name)
			return err == nil && want(v), fmt.Sprintf("%v %v", v, err)
		})
	}
	waitMetric("desiredReplicas", func(v float64) bool { return v <= 3 }, "idle fleet needs no more than its pods")
	var conns []*websocket.Conn
	for i := range 6 {
		r := wsdial.Dial(ctx, h.nodes[i%2].url, nil)
		if r.Err != nil {
			t.Fatalf("dial %d: status %d: %v", i, r.Status, r.Err)
		}
		conns = append(conns, r.Conn)
	}
	waitMetric("connections", func(v float64) bool { return v == 6 }, "connections = 6")
	waitMetric("saturation", func(v float64) bool { return v == 1 }, "saturation = 1")
	// The fleet is full: the next dials are refused for capacity, and the
	// rejection window asks for more pods.
	for range 3 {
		if r := wsdial.Dial(ctx, h.nodes[0].url, nil); r.Status != 503 || r.Reason != "capacity" {
			t.Fatalf("dial into a full fleet: status %d reason %q err %v", r.Status, r.Reason, r.Err)
		}
	}
	waitMetric("desiredReplicas", func(v float64) bool { return v > 3 }, "recommendation above 3 pods after capacity rejections")
	for _, c := range conns[:4] {
		c.Close(websocket.StatusNormalClosure, "")
	}
	waitMetric("connections", func(v float64) bool { return v == 2 }, "connections = 2 after 4 closed")
	active, err := h.keda.IsActive(ctx, kedatest.Ref("chat", ""))
	if err != nil || !active.Result {
		t.Fatalf("IsActive with live connections: %v %v", active, err)
	}
	for _, c := range conns[4:] {
		c.Close(websocket.StatusNormalClosure, "")
	}
}

// TestZeroPodFleetActivatesOnFirstRejection: a fleet scaled to zero has
// no pod to admit to; the first dial is refused (503 no_pods) and KEDA's
// StreamIsActive receives true for it.
func TestZeroPodFleetActivatesOnFirstRejection(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := h.keda.IsActive(ctx, kedatest.Ref("empty", ""))
	if err != nil || res.Result {
		t.Fatalf("empty fleet before any dial: active=%v err=%v, want inactive", res.GetResult(), err)
	}
	stream, err := h.keda.StreamIsActive(ctx, kedatest.Ref("empty", ""))
	if err != nil {
		t.Fatal(err)
	}
	n := h.nodes[0]
	gw, err := gateway.New(gateway.Config{TrackerURL: n.admit.URL, AccessLogAddr: n.alAddr, Fleet: "empty", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gw.Serve(ln) }()
	defer gw.Close()
	pushed := make(chan error, 1)
	go func() {
		m, err := stream.Recv()
		if err == nil && !m.Result {
			err = fmt.Errorf("pushed false")
		}
		pushed <- err
	}()
	start := time.Now()
	r := wsdial.Dial(ctx, "ws://"+ln.Addr().String()+"/", nil)
	if r.Status != 503 || r.Reason != "no_pods" || r.RetryAfter == "" {
		t.Fatalf("dial into a zero-pod fleet: status %d reason %q retry-after %q err %v", r.Status, r.Reason, r.RetryAfter, r.Err)
	}
	select {
	case err := <-pushed:
		if err != nil {
			t.Fatalf("StreamIsActive: %v", err)
		}
		t.Logf("StreamIsActive pushed true %s after the rejected dial", time.Since(start).Round(time.Millisecond))
	case <-ctx.Done():
		t.Fatal("StreamIsActive pushed nothing after the first rejected dial")
	}
}
