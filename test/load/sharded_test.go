package load

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// The sharded-fleet measurement's shape (issue 27, part 3): one fleet of
// shardPods pods, its churn spread over shardTrackers trackers (one per
// Envoy pod), each an open loop of shardRate lifecycles a second: a modest
// rate per tracker, where reuse and group commit do little and nearly
// every admission and release asks Redis.
const (
	shardTrackers = 12
	shardRate     = 150
	shardPods     = 300
	shardMasters  = 3
	// shardIdle is the window after each block's lifecycles in which only
	// the trackers' heartbeats and Redis' own cron run: their rate per node
	// is taken out for the load-only figures.
	shardIdle = 500 * time.Millisecond
)

// BenchmarkShardedCluster measures what sharding a fleet buys on a real
// Redis Cluster of three masters (redis-server --cluster-enabled yes on
// loopback): the same fleet and load with shards=1 (every key in one
// slot, so one master does all the fleet's work) and shards=3 (three
// groups, each in its own slot, the fleet's name chosen so that the three
// slots sit on three different masters). The load is open-loop churn
// spread over 12 in-process trackers of 150 lifecycles/s each (admit,
// establish, hold 20-200 ms, release), 1,800 arriving a second, the trackers
// heartbeating every 2 s (the default) as in production.
//
// Redis CPU is read per master (INFO cpu: the server's user + system time)
// before and after each one-second block, which ends once Redis counts
// every slot free. It reports, per 10,000 lifecycles, the busiest
// master's Redis CPU (busiest-cpu-ms/10k: the figure that bounds a fleet's
// churn, since one master's core saturates first), the same with the
// heartbeats' and cron's rate of the idle window after each block taken
// out (busiest-load-cpu-ms/10k), the three masters' sum (total-cpu-ms/10k),
// and the busiest master's share of the sum. With -count, a summary line
// follows all benchmarks: each figure's median [min–max] over the runs, and
// shards=3's busiest CPU (and the masters' sum) as a share of shards=1's,
// run by run (a third, if sharding cost nothing).
//
// On a small shared machine the busiest master's CPU falls less than to a
// third: the three masters together spend more per call than one did
// (total-cpu-ms/10k shows by how much), with the same calls per lifecycle
// (scripts/lifecycle); the README's Performance section discusses why.
//
// Run it alone, e.g. make bench BENCH=ShardedCluster PKGS=./test/load/
// BENCHTIME=9000x COUNT=3 (it is not part of make test).
func BenchmarkShardedCluster(b *testing.B) {
	cl := redistest.StartCluster(b, shardMasters)
	for _, n := range []int{1, shardMasters} {
		r := newShardRig(b, cl, n)
		b.Run(fmt.Sprintf("open/shards=%d", n), r.run)
		r.close()
	}
}

// shardRig is a cluster, one fleet on it with shards groups, and the
// trackers churning it.
type shardRig struct {
	cl     *redistest.Cluster
	rdb    *redis.ClusterClient
	nodes  []*redis.Client // one per master, for its INFO
	fc     fleets.Fleet
	store  *store.Store
	trs    []*tracker.Tracker
	ctx    context.Context
	stop   context.CancelFunc
	done   sync.WaitGroup
	refuse atomic.Int64
}

func newShardRig(b *testing.B, cl *redistest.Cluster, shards int) *shardRig {
	r := &shardRig{cl: cl}
	r.rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), PoolSize: 256})
	b.Cleanup(func() { r.rdb.Close() })
	for _, n := range cl.Nodes {
		c := n.Client()
		r.nodes = append(r.nodes, c)
	}
	r.store = store.NewStore(r.rdb, "wsgate")
	r.fc = fleets.Fleet{Name: r.fleetName(b, shards), MaxConnectionsPerPod: 1 << 20, Shards: shards,
		// The rate limit is not what is measured here.
		RatePerSecond: 1e9, Burst: 1e9}
	// As many pods in each group of shardMasters (the same pods for both
	// rigs): the trackers choose a group by its free slots, so a group's
	// share of the churn follows its share of the fleet's capacity, and an
	// uneven split (FNV's, for a handful of pods) would measure the split,
	// not Redis. A fleet of thousands of pods splits evenly within a few
	// percent by itself.
	perGroup := map[int]int{}
	for i := 0; len(r.fc.Pods) < shardPods; i++ {
		addr := fmt.Sprintf("10.3.%d.%d:8080", i/250, i%250+1)
		if g := fleets.GroupOf(addr, shardMasters); perGroup[g] < shardPods/shardMasters {
			perGroup[g]++
			r.fc.Pods = append(r.fc.Pods, addr)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx, r.stop = ctx, cancel
	r.trs = r.startTrackers(b, 0, shardTrackers)
	return r
}

// startTrackers starts trackers envoy-<from> ... envoy-<from+n-1> and
// waits until they grant.
func (r *shardRig) startTrackers(b *testing.B, from, n int) []*tracker.Tracker {
	var out []*tracker.Tracker
	for i := from; i < from+n; i++ {
		tr, err := tracker.New(tracker.Config{InstanceID: fmt.Sprintf("envoy-%02d", i), Fleets: []fleets.Fleet{r.fc},
			// Loose enough that two busy cores do not push admissions
			// into the fallback.
			RedisTimeout: 500 * time.Millisecond}, r.store, tracker.WithLogger(quiet))
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, tr)
		r.done.Add(1)
		go func() { defer r.done.Done(); tr.Run(r.ctx) }()
	}
	for _, tr := range out {
		await.Granting(b, "tracker "+tr.Config().InstanceID, tr, time.Minute)
	}
	return out
}

// fleetName picks the fleet's name: with shards groups, one whose groups'
// slots are on as many different masters (asserted); unsharded, the first
// candidate. Names are tried in order, so every run uses the same ones.
func (r *shardRig) fleetName(b *testing.B, shards int) string {
	i, _ := redistest.SpreadOverMasters(b, r.rdb, 1000, func(i int) []string {
		var keys []string
		for _, g := range (fleets.Fleet{Name: fmt.Sprintf("chat%d", i), Shards: shards}).GroupNames() {
			keys = append(keys, r.storeKeys(g).Epoch())
		}
		return keys
	})
	return fmt.Sprintf("chat%d", i)
}

func (r *shardRig) storeKeys(group string) store.Keys { return store.FleetKeys("wsgate", group) }

func (r *shardRig) close() {
	r.stop()
	r.done.Wait()
	// The next rig's trackers would otherwise share the masters with these
	// ones' leases, which heartbeat no more: nothing runs on them now.
	ctx := context.Background()
	_ = r.rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.FlushAll(ctx).Err() })
}

// lifecycle is one connection through tr: admitted, established, held,
// released.
func (r *shardRig) lifecycle(b *testing.B, tr *tracker.Tracker) {
	ctx := context.Background()
	res, err := tr.Admit(ctx, r.fc.Name)
	if err != nil {
		b.Error(err)
		return
	}
	if !res.Admitted {
		r.refuse.Add(1)
		return
	}
	if err := tr.Establish(res.Conn); err != nil {
		b.Error(err)
	}
	time.Sleep(holdMin + rand.N(holdMax-holdMin)) // the connection's life: nothing to await
	if err := tr.Release(ctx, res.Conn); err != nil {
		b.Error(err)
	}
}

// released waits until Redis counts no live connection in any group: every
// release of the block ran.
func (r *shardRig) released(b *testing.B) {
	ctx := context.Background()
	deadline := time.Now().Add(time.Minute)
	for {
		var live int64
		for _, g := range r.fc.GroupNames() {
			n, err := podsLive(ctx, r.rdb, r.storeKeys(g))
			if err != nil {
				b.Fatal(err)
			}
			live += n
		}
		if live == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("releases not applied within a minute: %d live", live)
		}
		time.Sleep(5 * time.Millisecond) // Redis has no event for a count
	}
}

// costs reads every master's Redis counts.
func (r *shardRig) costs(b *testing.B) []redisStats {
	out := make([]redisStats, len(r.nodes))
	for i, c := range r.nodes {
		out[i] = redisCost(b, c)
	}
	return out
}

func (r *shardRig) run(b *testing.B) {
	var load, idle []redisStats = make([]redisStats, len(r.nodes)), make([]redisStats, len(r.nodes))
	var loadT, idleT time.Duration
	var n, late int64
	r.refuse.Store(0)
	every := time.Second / shardRate
	b.ResetTimer()
	for done := 0; done < b.N; done += shardTrackers * shardRate {
		per := min(shardRate, (b.N-done+shardTrackers-1)/shardTrackers)
		c0, t0 := r.costs(b), time.Now()
		var wg sync.WaitGroup
		var blockLate atomic.Int64
		for _, tr := range r.trs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				blockLate.Add(int64(arrive(per, every, func() { r.lifecycle(b, tr) })))
			}()
		}
		wg.Wait()
		r.released(b)
		c1, t1 := r.costs(b), time.Now()
		time.Sleep(shardIdle) // a measured window, not a wait for an event
		c2, t2 := r.costs(b), time.Now()
		for i := range r.nodes {
			load[i], idle[i] = load[i].add(c1[i].sub(c0[i])), idle[i].add(c2[i].sub(c1[i]))
		}
		loadT, idleT = loadT+t1.Sub(t0), idleT+t2.Sub(t1)
		n += int64(per * shardTrackers)
		late += blockLate.Load()
	}
	b.StopTimer()
	if n == 0 {
		return
	}
	per10k := func(cpu float64) float64 { return cpu / float64(n) * 1e4 * 1e3 } // ms of CPU per 10k lifecycles
	var busiest, busiestLoad, total float64
	var all redisStats
	for i := range r.nodes {
		bg := idle[i].cpu / idleT.Seconds() * loadT.Seconds()
		busiest, busiestLoad = max(busiest, load[i].cpu), max(busiestLoad, load[i].cpu-bg)
		total += load[i].cpu
		all = all.add(load[i])
	}
	shardRuns.metric(b, all.scripts/float64(n), "scripts/lifecycle")
	shardRuns.metric(b, all.cmds/float64(n), "redis-cmds/lifecycle")
	shardRuns.metric(b, per10k(busiest), "busiest-cpu-ms/10k")
	shardRuns.metric(b, per10k(busiestLoad), "busiest-load-cpu-ms/10k")
	shardRuns.metric(b, per10k(total), "total-cpu-ms/10k")
	if total > 0 {
		shardRuns.metric(b, busiest/total, "busiest-share")
	}
	shardRuns.metric(b, float64(n)/loadT.Seconds(), "lifecycles/s")
	shardRuns.metric(b, float64(late)/float64(n), "late-share")
	shardRuns.metric(b, float64(r.refuse.Load())/float64(n), "refused-share")
}

// shardRuns holds BenchmarkShardedCluster's figures per run, for the
// summary TestMain prints after all benchmarks.
var shardRuns = &runs{by: map[string][]*benchRun{}}

// shardUnits are the figures the summary shows.
var shardUnits = []string{"busiest-cpu-ms/10k", "busiest-load-cpu-ms/10k", "total-cpu-ms/10k", "busiest-share", "scripts/lifecycle",
	"lifecycles/s", "late-share"}

// shardSummary prints, per benchmark, the median [min–max] over runs of
// shardUnits, then shards=3's figures as a share of shards=1's, the i-th
// run of one against the i-th of the other (with -count, Go runs each
// sub-benchmark's runs in a row: all of shards=1's, then shards=3's, a
// minute or so apart).
func (r *runs) shardSummary(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	figures := func(name, unit string) []float64 {
		var vs []float64
		for _, run := range r.by[name] {
			if v, ok := run.figure[unit]; ok {
				vs = append(vs, v)
			}
		}
		return vs
	}
	spread := func(vs []float64) string {
		vs = slices.Sorted(slices.Values(vs))
		return fmt.Sprintf("%.2f [%.2f–%.2f]", (vs[(len(vs)-1)/2]+vs[len(vs)/2])/2, vs[0], vs[len(vs)-1])
	}
	for _, name := range r.names {
		var parts []string
		for _, unit := range shardUnits {
			if vs := figures(name, unit); len(vs) > 0 {
				parts = append(parts, unit+" "+spread(vs))
			}
		}
		fmt.Fprintf(w, "summary %s over %d runs (median [min–max]): %s\n", name, len(r.by[name]), strings.Join(parts, ", "))
	}
	one := "/shards=1"
	three := fmt.Sprintf("/shards=%d", shardMasters)
	for _, name := range r.names {
		if !strings.Contains(name, one) {
			continue
		}
		other := strings.Replace(name, one, three, 1)
		if _, ok := r.by[other]; !ok {
			continue
		}
		for _, unit := range []string{"busiest-cpu-ms/10k", "busiest-load-cpu-ms/10k", "total-cpu-ms/10k"} {
			a, c := figures(name, unit), figures(other, unit)
			var ratios []float64
			for i := range min(len(a), len(c)) {
				if a[i] > 0 {
					ratios = append(ratios, c[i]/a[i])
				}
			}
			if len(ratios) > 0 {
				fmt.Fprintf(w, "summary %s %s: shards=%d / shards=1 over %d runs (median [min–max]): %s\n",
					strings.TrimPrefix(other, "BenchmarkShardedCluster/"), unit, shardMasters, len(ratios), spread(ratios))
			}
		}
	}
}
