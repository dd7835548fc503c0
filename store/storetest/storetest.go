// Package storetest holds the helpers the tests of the store and of its
// users share: a Store on miniredis, the contract tests' backends
// (miniredis and a real redis-server), registries, and instances that have
// joined an epoch.
package storetest

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
)

// T0 is the tests' fixed start time.
var T0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// NewMini is a Store on a fresh miniredis, which has no run_id.
func NewMini(t *testing.T) (*store.Store, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	return store.NewStore(rdb, "wsgate").WithoutRestartDetection(), mr
}

// Pods are ready registry entries for addrs.
func Pods(addrs ...string) []fleets.Pod {
	out := make([]fleets.Pod, len(addrs))
	for i, a := range addrs {
		out[i] = fleets.Pod{Addr: a, Name: fmt.Sprintf("pod-%d", i), Ready: true}
	}
	return out
}

// SetPods sets fleet's registry or fails the test.
func SetPods(t *testing.T, s *store.Store, fleet string, pods []fleets.Pod) {
	t.Helper()
	if err := s.SetPods(context.Background(), fleet, pods); err != nil {
		t.Fatal(err)
	}
}

// Admit admits one connection of inst (joining it first) or fails the test.
func Admit(t *testing.T, s *store.Store, fleet string, cap int, p fleets.Policy, inst string, now time.Time) store.Admission {
	t.Helper()
	a, err := s.AdmitOne(context.Background(), store.AdmitRequest{Fleet: fleet, MaxPerPod: cap, Policy: p, Instance: inst, Epoch: EpochOf(t, s, fleet, inst), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if a.Fence != "" {
		t.Fatalf("admit %s for %s: fenced (%s)", fleet, inst, a.Fence)
	}
	return a
}

// registered remembers, per store, fleet and instance, the epoch of the
// instance's first heartbeat.
var registered sync.Map

// EpochOf is the epoch inst joined in its first heartbeat, sent on first
// use: a tracker admits through Redis only after one.
func EpochOf(t *testing.T, s *store.Store, fleet, inst string) string {
	t.Helper()
	key := fmt.Sprintf("%p/%s/%s", s, fleet, inst)
	if e, ok := registered.Load(key); ok {
		return e.(string)
	}
	res, err := s.Sync(context.Background(), store.SyncRequest{Fleet: fleet, Instance: inst, Lease: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// No recovery wait (RecoveryWait 0), and the tracker's confirmation of
	// it (see sync.lua) in a second heartbeat.
	if res.Recovering > 0 {
		if res, err = s.Sync(context.Background(), store.SyncRequest{Fleet: fleet, Instance: inst, Lease: time.Hour, Confirm: res.Epoch}); err != nil {
			t.Fatal(err)
		}
	}
	registered.Store(key, res.Epoch)
	// A later test's store may get this one's address.
	t.Cleanup(func() { registered.Delete(key) })
	return res.Epoch
}

// Register is the instances' first heartbeat.
func Register(t *testing.T, s *store.Store, fleet string, instances ...string) {
	t.Helper()
	for _, in := range instances {
		EpochOf(t, s, fleet, in)
	}
}

// Summary reads fleet's summary or fails the test.
func Summary(t *testing.T, s *store.Store, fleet string, now time.Time) store.Summary {
	t.Helper()
	sum, err := s.Summary(context.Background(), fleet, now)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// Backend is a Redis server a store contract test runs on.
type Backend struct {
	// Client is a client of the server, for tests that look at Redis
	// itself (name its keys with store.Keys).
	Client *redis.Client
	// Mini is the miniredis server; nil on a real redis-server.
	Mini *miniredis.Miniredis
}

// Store is a Store on the backend whose keys start with {prefix:<fleet>}:
// without restart detection on miniredis, which has no run_id.
func (b Backend) Store(prefix string) *store.Store {
	s := store.NewStore(b.Client, prefix)
	if b.Mini != nil {
		s = s.WithoutRestartDetection()
	}
	return s
}

// Backends runs test on miniredis and on a real redis-server (whose Lua
// the scripts run in production), each fresh, with a Store under the
// default prefix. Where redis-server is missing the second is skipped,
// except under CI=true, where it fails (test/redistest).
func Backends(t *testing.T, test func(t *testing.T, s *store.Store, b Backend)) {
	t.Helper()
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { rdb.Close() })
		b := Backend{Client: rdb, Mini: mr}
		test(t, b.Store(""), b)
	})
	t.Run("redis-server", func(t *testing.T) {
		b := Backend{Client: redistest.Start(t).Client()}
		test(t, b.Store(""), b)
	})
}

// Held is what the Redis behind c counts for instance inst in fleet, all
// pods together (inst:<id>, with the default prefix): what a replica or a
// promoted replica received of its grants.
func Held(t *testing.T, c redis.Cmdable, fleet, inst string) int {
	t.Helper()
	m, err := c.HGetAll(context.Background(), store.NewStore(nil, "wsgate").Keys(fleet).Inst(inst)).Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for pod, v := range m {
		x, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("inst:%s holds %q on %s: not a count", inst, v, pod)
		}
		n += x
	}
	return n
}

// Republish is a full heartbeat of each of instances that publishes what
// Redis counts for it (its per-pod counts, pending ones included), as a
// tracker whose local truth is exactly its grants would: Redis' counts
// stay, the instance's total (what Summary.Live sums) becomes theirs, and
// its lease runs an hour. An instance Redis does not hold (reaped, left)
// is skipped: a heartbeat would bring it back.
func Republish(t *testing.T, s *store.Store, fleet string, now time.Time, instances ...string) {
	t.Helper()
	ctx := context.Background()
	snap, err := s.Snapshot(ctx, fleet, now)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := s.Instances(ctx, fleet)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range instances {
		seq, ok := seqs[id]
		if !ok {
			continue
		}
		var counts []store.PodCount
		for _, in := range snap.Instances {
			if in.ID != id {
				continue
			}
			for pod, n := range in.Live {
				counts = append(counts, store.PodCount{Pod: pod, Live: n, Established: in.Established[pod]})
			}
		}
		// The seq Redis holds: not stale, and releases compare with the same.
		res, err := s.Sync(ctx, store.SyncRequest{Fleet: fleet, Instance: id, Lease: time.Hour, Seq: seq, Counts: counts})
		if err != nil {
			t.Fatal(err)
		}
		if res.Stale || res.NeedFull {
			t.Fatalf("republish %s of %s: stale %v, need full %v", fleet, id, res.Stale, res.NeedFull)
		}
	}
}

// Counted is Redis' count of fleet's live connections, all pods (avail
// and load): what the admit and release scripts move at once, where
// Summary.Live, the instances' heartbeats' totals, trails it by up to a
// heartbeat.
func Counted(t *testing.T, s *store.Store, fleet string) int {
	t.Helper()
	loads, err := s.PodLoads(context.Background(), fleet)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range loads {
		n += c
	}
	return n
}
