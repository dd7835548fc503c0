package scaler_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"

	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/test/await"
)

// waitSubscribers polls Redis (an external process) until the fleet's
// events channel has n subscribers.
func (e *env) waitSubscribers(fleet string, n int64) {
	e.t.Helper()
	ch := e.store.Keys(fleet).Events()
	await.Until(e.t, fmt.Sprintf("%s: %d subscribers", ch, n), 5*time.Second, func() (bool, string) {
		got, err := e.rdb.PubSubNumSub(context.Background(), ch).Result()
		return err == nil && got[ch] == n, fmt.Sprintf("%v subscribers (err %v)", got[ch], err)
	})
}

type recv struct {
	res *externalscaler.IsActiveResponse
	err error
	at  time.Time
}

func receive(st grpc.ServerStreamingClient[externalscaler.IsActiveResponse]) <-chan recv {
	out := make(chan recv, 16)
	go func() {
		defer close(out)
		for {
			res, err := st.Recv()
			out <- recv{res, err, time.Now()}
			if err != nil {
				return
			}
		}
	}()
	return out
}

func TestStreamIsActivePushesWithinASecond(t *testing.T) {
	// A poll far longer than the test: only pub/sub can wake the stream.
	e := start(t, opts{cfg: scaler.Config{Fleets: testFleets(), PollInterval: time.Hour}})
	tr := e.tracker("envoy-a")
	e.active("fleet", "web") // the client connection is up before counting
	before := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	st, err := e.client.StreamIsActive(ctx, ref("fleet", "web"))
	if err != nil {
		t.Fatal(err)
	}
	got := receive(st)
	e.waitSubscribers("web", 1)

	admitted := time.Now()
	_, conns := e.admit(tr, "web", 1) // and the heartbeat that publishes it
	r := <-got
	if r.err != nil || !r.res.Result {
		t.Fatalf("first push: %v %v, want true", r.res, r.err)
	}
	if lat := r.at.Sub(admitted); lat >= time.Second {
		t.Errorf("inactive -> active pushed after %s, want < 1s", lat)
	} else {
		t.Logf("push latency %s", lat)
	}

	// active -> inactive sends nothing; inactive -> active again is pushed.
	if err := tr.Release(context.Background(), conns[0]); err != nil {
		t.Fatal(err)
	}
	e.heartbeat(tr) // publishes nothing: the stream must notice via the next event
	e.admit(tr, "web", 1)
	if r := <-got; r.err != nil || !r.res.Result {
		t.Fatalf("second push: %v %v, want true", r.res, r.err)
	}
	select {
	case r := <-got:
		t.Fatalf("unexpected message %v %v: only transitions to true are sent", r.res, r.err)
	default:
	}

	// KEDA goes away: the server's stream ends, unsubscribes and leaves no
	// goroutine behind.
	cancel()
	for r := range got {
		if r.err == nil {
			t.Fatalf("message after cancel: %v", r.res)
		}
	}
	e.waitSubscribers("web", 0)
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before the stream:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStreamIsActiveSendsCurrentActivityAndPolls(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: testFleets(), PollInterval: 50 * time.Millisecond}})
	tr := e.tracker("envoy-a")
	e.admit(tr, "web", 1)
	st, err := e.client.StreamIsActive(context.Background(), ref("fleet", "web"))
	if err != nil {
		t.Fatal(err)
	}
	if res, err := st.Recv(); err != nil || !res.Result {
		t.Fatalf("already active fleet: %v %v, want true at once", res, err)
	}
}

func TestStopEndsStreams(t *testing.T) {
	e := start(t, opts{cfg: scaler.Config{Fleets: testFleets(), PollInterval: time.Hour}})
	e.tracker("envoy-a")
	st, err := e.client.StreamIsActive(context.Background(), ref("fleet", "web"))
	if err != nil {
		t.Fatal(err)
	}
	got := receive(st)
	e.waitSubscribers("web", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stopped := make(chan struct{})
	go func() { e.grpc.Stop(ctx); close(stopped) }()
	r := <-got
	if !errors.Is(r.err, io.EOF) {
		t.Errorf("stream after stop: %v %v, want a clean end (EOF)", r.res, r.err)
	}
	<-stopped
	if ctx.Err() != nil {
		t.Error("graceful stop needed the forced stop: a stream did not end")
	}
	e.waitSubscribers("web", 0)
}
