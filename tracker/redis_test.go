package tracker_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// TestDocumentedACLSuffices: a tracker and the scaler's reads work as a
// user with exactly the documented ACL.
func TestDocumentedACLSuffices(t *testing.T) {
	s := redistest.Start(t)
	rdb := s.ACLClient("wsgate-tracker", redistest.TrackerACL)
	tr, err := tracker.New(tracker.Config{InstanceID: "e1", Heartbeat: 200 * time.Millisecond, InstanceTTL: time.Second, RedisTimeout: 5 * time.Second,
		Fleets: []fleets.Fleet{fleetCfg("chat", 2, "10.0.0.1:80")}}, store.NewStore(rdb, "wsgate"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tr.AwaitGranting(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := tr.Admit(ctx, "chat")
	if err != nil || !res.Admitted || res.Fallback {
		t.Fatalf("admit as the ACL user: %+v %v", res, err)
	}
	if err := tr.Establish(res.Conn); err != nil {
		t.Fatal(err)
	}
	if err := tr.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tr.Release(ctx, res.Conn); err != nil || tr.Flush(ctx) != nil || tr.Degraded("chat") {
		t.Fatalf("release as the ACL user: %v (degraded %v)", err, tr.Degraded("chat"))
	}
	sc := store.NewStore(s.ACLClient("wsgate-scaler", redistest.ScalerACL), "wsgate")
	if _, err := sc.Summary(ctx, "chat", time.Now()); err != nil {
		t.Errorf("summary as the scaler's ACL user: %v", err)
	}
	if _, err := sc.Snapshot(ctx, "chat", time.Now()); err != nil {
		t.Errorf("snapshot as the scaler's ACL user: %v", err)
	}
	if _, err := sc.Fleets(ctx); err != nil {
		t.Errorf("fleets as the scaler's ACL user: %v", err)
	}
	// The scaler's writes: its decisions and the pod-cost hook's order.
	if err := sc.RecordDecision(ctx, store.DecisionRecord{Fleet: "chat", Trigger: "t1", Now: time.Now(), TTL: time.Minute, Fields: map[string]any{"desired": 1}}); err != nil {
		t.Errorf("record decision as the scaler's ACL user: %v", err)
	}
	if err := sc.SetScaleDown(ctx, "chat", []string{"10.0.0.1:80"}); err != nil {
		t.Errorf("scale-down order as the scaler's ACL user: %v", err)
	}
	if err := sc.ClearScaleDown(ctx, "chat"); err != nil {
		t.Errorf("clear scale-down order as the scaler's ACL user: %v", err)
	}
}

// syncBuffer is a log sink the tracker's goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestRedisRefusalIsNamed: when Redis answers with an error, the warning
// and /readyz say what it answered, not only "unreachable".
func TestRedisRefusalIsNamed(t *testing.T) {
	s := redistest.Start(t)
	cases := map[string]struct {
		rdb  func() redis.UniversalClient
		want string
	}{
		"master name on a plain Redis": {func() redis.UniversalClient {
			rdb, _ := store.NewRedisClient(store.RedisConfig{Addrs: []string{s.Addr()}, MasterName: "mymaster"})
			t.Cleanup(func() { rdb.Close() })
			return rdb
		}, "--redis-addr is not a Sentinel but a plain Redis"},
		"no evalsha": {func() redis.UniversalClient { return s.ACLClient("no-eval", "~* +@all -evalsha -eval") }, "NOPERM"},
		"wrong password": {func() redis.UniversalClient {
			rdb, _ := store.NewRedisClient(store.RedisConfig{Addrs: []string{s.Addr()}, Username: "no-eval", Password: "wrong"})
			t.Cleanup(func() { rdb.Close() })
			return rdb
		}, "WRONGPASS"},
	}
	for name, c := range cases {
		var logs syncBuffer
		tr, err := tracker.New(tracker.Config{InstanceID: "e1", Heartbeat: 200 * time.Millisecond, InstanceTTL: time.Second, RedisTimeout: 5 * time.Second,
			Fleets: []fleets.Fleet{fleetCfg("chat", 2, "10.0.0.1:80")}}, store.NewStore(c.rdb(), "wsgate"),
			tracker.WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := tr.Heartbeat(context.Background()); err == nil {
				t.Fatalf("%s: heartbeat succeeded", name)
			}
		}
		if err := tr.Ready(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: readiness %v, want the reason %s", name, err, c.want)
		}
		if out := logs.String(); !strings.Contains(out, `"level":"WARN"`) || !strings.Contains(out, c.want) || strings.Count(out, `"level":"WARN"`) != 1 {
			t.Errorf("%s: want one warning naming %s (the second rate-limited), got:\n%s", name, c.want, out)
		}
	}
}
