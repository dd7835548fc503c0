package load

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
)

// BenchmarkHeartbeatDelta measures the Redis CPU of one instance's
// heartbeat (sync.lua) on a fleet of 1,000 placeable pods where it holds
// connections on `held` of them, as a full heartbeat (it re-states every
// count: today's, and a delta's fallback) and as a delta (PROTOCOL.md,
// "Delta heartbeats") with 0 and with 5 pods moved since the last one. The
// kinds alternate in blocks on one redis-server, so that each ratio to the
// full heartbeat is of the same run: full-µs/call, delta0-µs/call,
// delta5-µs/call, and delta0/full, delta5/full.
func BenchmarkHeartbeatDelta(b *testing.B) {
	srv := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	b.Cleanup(func() { rdb.Close() })
	s := store.NewStore(rdb, "wsgate")
	ctx := context.Background()

	for _, held := range []int{50, 500} {
		b.Run(fmt.Sprintf("pods=1000/held=%d", held), func(b *testing.B) {
			c := newCostFleet(b, s, "delta", 1000, 1<<20)
			counts := make([]store.PodCount, held)
			for i := range counts {
				counts[i] = store.PodCount{Pod: c.pods[i], Live: 1, Established: 1}
			}
			var seq uint64 = 10
			var base store.SyncBase
			sync := func(req store.SyncRequest) {
				seq++
				req.Fleet, req.Instance, req.Lease, req.Seq = c.name, c.inst, time.Hour, seq
				res, err := s.Sync(ctx, req)
				if err != nil || res.Stale || res.NeedFull {
					b.Fatal(res, err)
				}
				base = store.SyncBase{Epoch: res.Epoch, Seq: seq}
			}
			sync(store.SyncRequest{Counts: counts})
			const block = 200
			var full, delta0, delta5 redisStats
			var n int
			for n < b.N {
				k := min(block, b.N-n)
				r0 := redisCost(b, rdb)
				for range k {
					sync(store.SyncRequest{Counts: counts})
				}
				r1 := redisCost(b, rdb)
				for range k {
					bs := base
					sync(store.SyncRequest{Base: &bs})
				}
				r2 := redisCost(b, rdb)
				for j := range k {
					// 5 pods move (a connection more, then one less): what
					// the tracker then holds is counts, plus one on those
					// every other heartbeat
					moved := make([]store.PodCount, 5)
					for m := range moved {
						moved[m] = store.PodCount{Pod: c.pods[m], Live: 1 + j%2, Established: 1}
					}
					bs := base
					sync(store.SyncRequest{Base: &bs, Counts: moved})
				}
				r3 := redisCost(b, rdb)
				// back to counts exactly, for the next full block
				bs := base
				moved := make([]store.PodCount, 5)
				for m := range moved {
					moved[m] = store.PodCount{Pod: c.pods[m], Live: 1, Established: 1}
				}
				sync(store.SyncRequest{Base: &bs, Counts: moved})
				full, delta0, delta5 = full.add(r1.sub(r0)), delta0.add(r2.sub(r1)), delta5.add(r3.sub(r2))
				n += k
			}
			per := func(r redisStats) float64 { return r.cpu / float64(n) * 1e6 }
			b.ReportMetric(per(full), "full-µs/call")
			b.ReportMetric(per(delta0), "delta0-µs/call")
			b.ReportMetric(per(delta5), "delta5-µs/call")
			b.ReportMetric(delta0.cpu/full.cpu, "delta0/full")
			b.ReportMetric(delta5.cpu/full.cpu, "delta5/full")
			b.ReportMetric(full.cmds/float64(n), "full-cmds/call")
			b.ReportMetric(delta5.cmds/float64(n), "delta5-cmds/call")
		})
	}
}
