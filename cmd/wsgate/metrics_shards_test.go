package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
)

// shardedReport is `wsgate metrics -o json`'s fleet, the fields the
// sharded tests look at.
type shardedReport struct {
	Fleets []struct {
		Name        string `json:"name"`
		Connections struct {
			Live int64 `json:"live"`
			Pods []struct {
				Addr string `json:"addr"`
				Live int    `json:"live"`
			} `json:"pods"`
		} `json:"connections"`
		Readiness struct {
			Ready bool   `json:"ready"`
			Why   string `json:"why"`
		} `json:"readiness"`
		Groups []struct {
			Name      string `json:"name"`
			Reachable bool   `json:"reachable"`
			Live      int64  `json:"live"`
		} `json:"groups"`
	} `json:"fleets"`
}

// A sharded fleet's groups live in their own slots, on a Cluster on other
// masters: `wsgate metrics` finds them and shows the fleet as one row,
// its groups listed.
func TestMetricsFoldsAShardedFleetsGroupsOnACluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	s := store.NewStore(rdb, "wsgate")
	ctx := context.Background()
	f := fleets.Fleet{Name: "chat", Shards: 3}

	// The trackers record the layout before their first heartbeat (a
	// group 0 with state and no layout would be recorded as 1); without
	// --config, `--fleet chat` learns the groups from it below.
	if _, err := s.Layout(ctx, "chat", 3); err != nil {
		t.Fatal(err)
	}
	masters := map[string]int{} // address -> group
	for k, g := range f.GroupNames() {
		m, err := rdb.MasterForKey(ctx, s.Keys(g).Epoch())
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Options().Addr] = k
		// One pod per group, holding k+1 connections of envoy-1.
		var pod string
		for i := 1; pod == ""; i++ {
			if a := fmt.Sprintf("10.0.4.%d:80", i); fleets.GroupOf(a, 3) == k {
				pod = a
			}
		}
		if err := s.SetPods(ctx, g, []fleets.Pod{{Addr: pod, Name: "p" + pod, Ready: true}}); err != nil {
			t.Fatal(err)
		}
		counts := []store.PodCount{{Pod: pod, Live: k + 1, Established: k + 1}}
		res, err := s.Sync(ctx, store.SyncRequest{Fleet: g, Instance: "envoy-1", Lease: 5 * time.Minute, Seq: 1, Counts: counts})
		if err != nil {
			t.Fatal(err)
		}
		// No recovery wait was asked: the confirmation ends it.
		if _, err := s.Sync(ctx, store.SyncRequest{Fleet: g, Instance: "envoy-1", Lease: 5 * time.Minute, Seq: 2, Confirm: res.Epoch, Counts: counts}); err != nil {
			t.Fatal(err)
		}
	}
	if len(masters) < 2 {
		t.Fatal("the 3 groups share one master: the test would not prove the scan covers every shard")
	}

	var out strings.Builder
	args := []string{"--redis-addr", strings.Join(cl.Addrs(), ","), "--redis-cluster", "--settle", "0s", "-o", "json"}
	if err := metricsTo(ctx, &out, args, time.Now); err != nil {
		t.Fatal(err)
	}
	var rep shardedReport
	if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(rep.Fleets) != 1 || rep.Fleets[0].Name != "chat" {
		t.Fatalf("fleets %+v, want the groups folded into one fleet chat\n%s", rep.Fleets, out.String())
	}
	chat := rep.Fleets[0]
	if chat.Connections.Live != 1+2+3 || len(chat.Connections.Pods) != 3 {
		t.Errorf("chat: live %d over %d pods, want 6 over 3", chat.Connections.Live, len(chat.Connections.Pods))
	}
	if len(chat.Groups) != 3 || chat.Groups[2].Name != "chat#2" || chat.Groups[2].Live != 3 || !chat.Groups[2].Reachable {
		t.Errorf("groups %+v, want chat, chat#1, chat#2 (3 live)", chat.Groups)
	}
	if !chat.Readiness.Ready {
		t.Errorf("readiness %+v, want ready", chat.Readiness)
	}

	// --fleet without a fleets file: the groups come from the layout the
	// trackers recorded, no scan. A group whose shard is down shows as
	// unreachable (report's tests; killing a master here would race the
	// Cluster's failure detection, after which no slot answers).
	out.Reset()
	args = append(args, "--fleet", "chat")
	if err := metricsTo(ctx, &out, args, time.Now); err != nil {
		t.Fatal(err)
	}
	rep = shardedReport{}
	if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if chat = rep.Fleets[0]; len(chat.Groups) != 3 || chat.Connections.Live != 6 {
		t.Errorf("--fleet chat: %d groups, live %d; want 3 and 6", len(chat.Groups), chat.Connections.Live)
	}
	out.Reset()
	if err := metricsTo(ctx, &out, append(args[:len(args):len(args)], "-o", "table"), time.Now); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "GROUPS  3 shards") || !strings.Contains(out.String(), "chat#2  ok") {
		t.Errorf("table does not show the groups:\n%s", out.String())
	}
	t.Logf("table:\n%s", out.String())
}
