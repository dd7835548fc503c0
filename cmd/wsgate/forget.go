package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

func init() {
	commands["forget-instance"] = runForget
	commands["forget-layout"] = runForgetLayout
}

const forgetUsage = `Usage: wsgate forget-instance --fleet NAME [flags] INSTANCE-ID

Gives back the slots of a tracker instance that will not come back, for
fleets whose fleets file says expiredInstances: keep (which never does it by itself)
or kube (where Kubernetes still lists the pod).
Redis refuses while the instance's lease has not ended by its own clock:
only an instance that stopped heartbeating can be forgotten. Make sure its
Envoy is gone: its connections stop being counted.

Flags:
`

func runForget(args []string) error {
	fs := flag.NewFlagSet("wsgate forget-instance", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), forgetUsage)
		fs.PrintDefaults()
	}
	ro := redisFlags(fs)
	fleet := fs.String("fleet", "", "the fleet the instance belongs to (required)")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of the whole call to Redis")
	rest, err := parseFlagsRest(fs, args, 1)
	if err != nil {
		return err
	}
	if *fleet == "" || len(rest) != 1 {
		return errors.New("want --fleet NAME and one INSTANCE-ID")
	}
	id := rest[0]
	cfg := ro.config()
	rdb, err := store.NewRedisClient(cfg)
	if err != nil {
		return err
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	st := store.NewStore(rdb, cfg.Prefix)
	snap, err := st.Snapshot(ctx, *fleet, time.Now())
	if err != nil {
		return fmt.Errorf("reach Redis at %s: %w", strings.Join(cfg.Addrs, ","), err)
	}
	if !snap.Known() {
		known, err := st.Fleets(ctx)
		return unknownFleet(st, *fleet, known, err)
	}
	var lease *store.InstanceState
	for i := range snap.Instances {
		if snap.Instances[i].ID == id {
			lease = &snap.Instances[i]
		}
	}
	if lease == nil {
		return fmt.Errorf("fleet %s has no instance %q", *fleet, id)
	}
	gone, err := st.Reap(ctx, *fleet, []string{id})
	if err != nil {
		return err
	}
	if len(gone) == 0 {
		left := lease.LeaseUntil.Sub(snap.RedisNow).Round(time.Second)
		return fmt.Errorf("instance %q of fleet %s still holds a lease, until %s by Redis' clock (in %s): it heartbeated within its instanceTTL, so it may be alive; retry after that if it stays silent",
			id, *fleet, lease.LeaseUntil.UTC().Format(time.RFC3339), max(left, time.Second))
	}
	fmt.Fprintf(os.Stdout, "forgot instance %s of fleet %s: its slots are free\n", id, *fleet)
	return nil
}

const forgetLayoutUsage = `Usage: wsgate forget-layout --fleet NAME [flags]

Lets the next tracker to heartbeat a fleet record its shards as the
fleet's layout (the number of groups Redis records for it): the offline
step of changing a fleet's shards (README, "Sharded fleets"). Trackers and
the scaler follow the recorded layout; one whose shards differ admits
nothing through Redis. Refused while any group of the recorded layout still
counts a connection on a pod (Redis' own counts): drain the fleet first, and run every tracker and the
scaler with the new shards before this, or an old one records the old
layout again.

It freezes the layout first (every tracker then refuses Redis for the
fleet), waits --settle for the trackers to see it, checks the drain again
and only then writes "record the next": a tracker that admitted between the
first check and the freeze is seen by the second.

Flags:
`

func runForgetLayout(args []string) error {
	fs := flag.NewFlagSet("wsgate forget-layout", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), forgetLayoutUsage)
		fs.PrintDefaults()
	}
	ro := redisFlags(fs)
	fleet := fs.String("fleet", "", "the fleet whose layout to forget (required)")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of each step's calls to Redis")
	settle := fs.Duration("settle", 5*time.Second, "how long the frozen layout stands before the drain is checked again: at least the trackers' --heartbeat + max(--redis-timeout, --heartbeat/4) + --redis-timeout, so that every tracker has checked the layout since it was frozen")
	if _, err := parseFlagsRest(fs, args, 0); err != nil {
		return err
	}
	if *fleet == "" {
		return errors.New("want --fleet NAME")
	}
	if *settle < 0 {
		return fmt.Errorf("--settle %s: must not be negative", *settle)
	}
	cfg := ro.config()
	rdb, err := store.NewRedisClient(cfg)
	if err != nil {
		return err
	}
	defer rdb.Close()
	st := store.NewStore(rdb, cfg.Prefix)
	step := func(f func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		return f(ctx)
	}
	var n int
	if err := step(func(ctx context.Context) error {
		var err error
		if n, err = st.RecordedLayout(ctx, *fleet); err != nil {
			return fmt.Errorf("reach Redis at %s: %w", strings.Join(cfg.Addrs, ","), err)
		}
		return nil
	}); err != nil {
		return err
	}
	switch {
	case n == store.LayoutNext:
		return fmt.Errorf("fleet %s has no recorded layout: the next tracker to heartbeat it records its shards", *fleet)
	case n == store.LayoutFrozen:
		// A forget-layout that stopped half way: its drain check is done
		// again below, against every group it may have had.
		n = fleets.MaxShards
	}
	if err := step(func(ctx context.Context) error { return drained(ctx, st, *fleet, n) }); err != nil {
		return err
	}
	if err := step(func(ctx context.Context) error { return st.SetLayout(ctx, *fleet, store.LayoutFrozen) }); err != nil {
		return err
	}
	time.Sleep(*settle) // the trackers' next layout checks; nothing to await
	if err := step(func(ctx context.Context) error { return drained(ctx, st, *fleet, n) }); err != nil {
		if n != fleets.MaxShards {
			if uerr := step(func(ctx context.Context) error { return st.SetLayout(ctx, *fleet, n) }); uerr != nil {
				return fmt.Errorf("%w; and the layout stays frozen (run forget-layout again once drained): %w", err, uerr)
			}
		}
		return err
	}
	if err := step(func(ctx context.Context) error { return st.SetLayout(ctx, *fleet, store.LayoutNext) }); err != nil {
		return fmt.Errorf("%w: the layout stays frozen, run forget-layout again", err)
	}
	fmt.Fprintf(os.Stdout, "forgot fleet %s's layout of %d groups: the next tracker to heartbeat it records its shards\n", *fleet, n)
	return nil
}

// drained checks that no group of fleet's layout n counts a connection on
// any pod: Redis' own counts, which admission keeps at once, not the
// scaler's live count, which the heartbeats publish and which leaves out an
// instance that stopped heartbeating but still holds slots.
func drained(ctx context.Context, st *store.Store, fleet string, n int) error {
	var busy []string
	for k := range n {
		g := fleets.GroupName(fleet, k)
		loads, err := st.PodLoads(ctx, g)
		if err != nil {
			return fmt.Errorf("group %s: %w", g, err)
		}
		total := 0
		for _, c := range loads {
			total += c
		}
		if total > 0 {
			busy = append(busy, fmt.Sprintf("%s: %d", g, total))
		}
	}
	if len(busy) > 0 {
		return fmt.Errorf("fleet %s (layout %d) still counts connections (%s): a pod's count cannot move to another group, so drain the fleet first (README, \"Sharded fleets\")",
			fleet, n, strings.Join(busy, ", "))
	}
	return nil
}
