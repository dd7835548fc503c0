package tracker_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// TestShardsOnRedisCluster: the 3 groups of a fleet with 3 shards live on
// the 3 masters of a real Redis Cluster. With one master killed, the other
// groups keep admitting through Redis; the killed group's pods are decided
// by its fallback (share: only into the slots its tracker freed since), and
// no pod ever holds more than the cap. Killed: the master of the group
// tracker e0 holds most in, and group 0's (where the layout is: its
// check fails, the last finding stands and the other groups go on).
func TestShardsOnRedisCluster(t *testing.T) {
	t.Run("most_held", func(t *testing.T) { shardsOnRedisCluster(t, false) })
	t.Run("group_0", func(t *testing.T) { shardsOnRedisCluster(t, true) })
}

func shardsOnRedisCluster(t *testing.T, killGroup0 bool) {
	cl := redistest.StartCluster(t, 3)
	ctx := context.Background()
	for _, n := range cl.Nodes {
		// A master's loss must not stop the others serving their slots.
		if err := n.Client().ConfigSet(ctx, "cluster-require-full-coverage", "no").Err(); err != nil {
			t.Fatal(err)
		}
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), DialTimeout: 300 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	const shards, cap = 3, 2

	// A fleet name whose groups' slots are on 3 different masters.
	st := store.NewStore(rdb, "wsgate")
	i, masters := redistest.SpreadOverMasters(t, rdb, 100, func(i int) []string {
		var keys []string
		for _, g := range (fleets.Fleet{Name: fmt.Sprintf("chat%d", i), Shards: shards}).GroupNames() {
			keys = append(keys, st.Keys(g).Epoch())
		}
		return keys
	})
	name := fmt.Sprintf("chat%d", i)

	pods := podAddrs(12)
	clk := newClock()
	var trs []*tracker.Tracker
	for i := range 2 {
		trs = append(trs, newTracker(t, rdb, fmt.Sprintf("e%d", i), clk, tracker.FallbackShare, shardedCfg(name, shards, cap, pods...)))
	}
	startShards(t, clk, trs...)
	for _, tr := range trs {
		tracker.SetReuse(tr, name, false)
	}

	held := map[string]int{} // pod -> connections the test holds
	type conn struct {
		tr *tracker.Tracker
		tracker.Result
	}
	var conns []conn
	admitOn := func(tr *tracker.Tracker) tracker.Result {
		res := admit(t, tr, name)
		if res.Admitted {
			if held[res.Pod]++; held[res.Pod] > cap {
				t.Fatalf("pod %s holds %d connections, cap %d", res.Pod, held[res.Pod], cap)
			}
			conns = append(conns, conn{tr, res})
		}
		return res
	}
	// Until every group holds some (the fullest groups by free slots go
	// first: 12 pods hash into groups of 2, 3 and 7), all through Redis.
	perGroup := map[int]int{}
	// A heartbeat every 4: each tracker's view of the groups' free slots
	// counts only its own admissions since the last one, so without them
	// both keep choosing the largest group and the smallest may get none.
	for i := 0; len(perGroup) < shards && i < 20; i++ {
		if i%4 == 3 {
			heartbeat(t, trs...)
		}
		res := admitOn(trs[i%2])
		if !res.Admitted || res.Fallback {
			t.Fatalf("admission %d on a healthy cluster: %+v", i, res)
		}
		perGroup[fleets.GroupOf(res.Pod, shards)]++
	}
	if len(perGroup) != shards {
		t.Fatalf("admissions per group: %v; want every group used", perGroup)
	}

	// Kill the master of the group tracker e0 holds most in.
	byGroup := map[int]int{}
	for _, c := range conns {
		if c.tr == trs[0] {
			byGroup[fleets.GroupOf(c.Pod, shards)]++
		}
	}
	dead := 0
	for k, n := range byGroup {
		if n > byGroup[dead] && !killGroup0 {
			dead = k
		}
	}
	for _, n := range cl.Nodes {
		if n.Addr() == masters[dead] {
			n.Kill()
		}
	}
	// e0 releases its connections in the dead group: Redis cannot be told,
	// so their slots stay its own (ent - held), for its fallback.
	freed := 0
	var kept []conn
	for _, c := range conns {
		if c.tr == trs[0] && fleets.GroupOf(c.Pod, shards) == dead {
			held[c.Pod]--
			freed++
			if err := trs[0].Release(ctx, c.Conn); err != nil {
				t.Fatal(err)
			}
			continue
		}
		kept = append(kept, c)
	}
	conns = kept
	_ = trs[0].Flush(ctx)

	// Before any heartbeat (which gives up what an instance does not hold,
	// PROTOCOL.md, Entitlements), fill the fleet: the live groups through
	// Redis, then the dead group's fallback, which gives e0 exactly the
	// slots it freed there and e1 none.
	var viaRedis, fallbackDead [2]int
	for i, tr := range trs {
		for range 40 {
			res := admitOn(tr)
			if !res.Admitted {
				// capacity from Redis; redis_down when the dead group was
				// among those tried and its fallback had no slot
				if res.Reason != store.ReasonCapacity && res.Reason != store.ReasonRedisDown {
					t.Errorf("%s's refusal with every group full: %+v; want capacity or redis_down", tr.Config().InstanceID, res)
				}
				break
			}
			if g := fleets.GroupOf(res.Pod, shards); g == dead {
				if !res.Fallback {
					t.Fatalf("%s admitted on %s through the dead master", res.Conn, res.Pod)
				}
				fallbackDead[i]++
			} else if res.Fallback {
				t.Fatalf("a live group's admission fell back: %+v", res)
			}
		}
	}
	if fallbackDead[0] != freed || fallbackDead[1] != 0 {
		t.Errorf("fallback admissions in the dead group: e0 %d (it freed %d), e1 %d (freed none)", fallbackDead[0], freed, fallbackDead[1])
	}

	// Churn with heartbeats: the live groups keep admitting through
	// Redis, the dead one admits nothing. Each round frees two slots in
	// live groups, whichever tracker holds them: which tracker holds what
	// depends on the random group choices (e1 may hold nothing live when
	// e0 filled the fleet), and each tracker must then find one of them.
	for round := range 6 {
		for range trs {
			j := slices.IndexFunc(conns, func(c conn) bool { return fleets.GroupOf(c.Pod, shards) != dead })
			if j < 0 {
				t.Fatalf("round %d: no connection left in a live group", round)
			}
			c := conns[j]
			held[c.Pod]--
			release(t, c.tr, c.Conn)
			conns = slices.Delete(conns, j, j+1)
		}
		for _, tr := range trs {
			_ = tr.Heartbeat(ctx) // the dead group's fails; the others' must not
		}
		for i, tr := range trs {
			res := admitOn(tr)
			switch {
			case !res.Admitted:
				t.Errorf("round %d: %s refused with a slot freed in a live group: %+v", round, tr.Config().InstanceID, res)
			case fleets.GroupOf(res.Pod, shards) == dead || res.Fallback:
				t.Fatalf("round %d: %+v; want a live group's pod, through Redis", round, res)
			default:
				viaRedis[i]++
			}
		}
	}
	if viaRedis[0] == 0 || viaRedis[1] == 0 {
		t.Errorf("admissions through the live masters after the kill: %v; want both trackers to keep admitting", viaRedis)
	}
	if st := trs[1].Status().Fleets[0]; !st.Degraded || len(st.Groups) != shards || !st.Groups[dead].Degraded {
		t.Errorf("status with a dead master: %+v; want the dead group degraded", st)
	} else {
		for k, g := range st.Groups {
			if k != dead && !g.Granting {
				t.Errorf("group %s on a live master: %+v; want it granting", g.Fleet, g)
			}
		}
	}
	for _, tr := range trs {
		if st := tr.Status().Fleets[0]; st.LayoutMismatch || st.LayoutUnknown {
			t.Errorf("%s's layout with group %d's master dead: %+v; want the last finding (agreed) to stand", tr.Config().InstanceID, dead, st)
		}
	}
	t.Logf("fleet %s on masters %v; killed group %d's; after: through Redis %v, fallback in the dead group %v (e0 freed %d)", name, masters, dead, viaRedis, fallbackDead, freed)
}
