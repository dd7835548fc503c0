package report_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/test/redistest"
)

// The same scenario on a real redis-server renders exactly the golden
// tables of miniredis: the scripts and the reader agree on both.
func TestRealRedisMatchesGolden(t *testing.T) {
	srv := redistest.Start(t)
	sc := buildScenario(t, srv.Client())
	golden(t, "all_views", stableEpoch(t, sc, table(t, sc.report(t))))
}

// On Redis Cluster the fleets live on different shards: Fleets must scan
// every master, and each fleet's reads stay within its slot.
func TestRedisClusterFindsEveryFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node Redis Cluster")
	}
	cl := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	sc := buildScenario(t, rdb)
	masters := map[string]bool{}
	for _, f := range []string{"chat", "video"} {
		m, err := rdb.MasterForKey(context.Background(), sc.store.KeyPrefix(f)+"epoch")
		must(t, err)
		masters[m.Options().Addr] = true
	}
	if len(masters) != 2 {
		t.Fatalf("chat and video share one master: the test would not prove the scan covers every shard")
	}
	golden(t, "all_views", stableEpoch(t, sc, table(t, sc.report(t))))
}
