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

Deletes the layout (the number of groups, its shards) Redis recorded for a
fleet, so that the next tracker to heartbeat records its own: the offline
step of changing a fleet's shards (README, "Sharded fleets"). Trackers and
the scaler follow the recorded layout; one whose shards differ admits
nothing through Redis. Refused while any group of the recorded layout still
counts a connection: drain the fleet first, and run every tracker and the
scaler with the new shards before this, or an old one records the old
layout again.

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
	timeout := fs.Duration("timeout", 5*time.Second, "bound of the whole call to Redis")
	if _, err := parseFlagsRest(fs, args, 0); err != nil {
		return err
	}
	if *fleet == "" {
		return errors.New("want --fleet NAME")
	}
	cfg := ro.config()
	rdb, err := store.NewRedisClient(cfg)
	if err != nil {
		return err
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	st := store.NewStore(rdb, cfg.Prefix)
	n, err := st.RecordedLayout(ctx, *fleet)
	if err != nil {
		return fmt.Errorf("reach Redis at %s: %w", strings.Join(cfg.Addrs, ","), err)
	}
	if n == 0 {
		return fmt.Errorf("fleet %s has no recorded layout: the next tracker to heartbeat it records its shards", *fleet)
	}
	var busy []string
	for k := range n {
		g := fleets.GroupName(*fleet, k)
		sum, err := st.Summary(ctx, g, time.Now())
		if err != nil {
			return fmt.Errorf("group %s: %w", g, err)
		}
		if sum.Live > 0 {
			busy = append(busy, fmt.Sprintf("%s: %d", g, sum.Live))
		}
	}
	if len(busy) > 0 {
		return fmt.Errorf("fleet %s (layout %d) still counts connections (%s): a pod's count cannot move to another group, so drain the fleet first (README, \"Sharded fleets\")",
			*fleet, n, strings.Join(busy, ", "))
	}
	if _, err := st.ForgetLayout(ctx, *fleet); err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "forgot fleet %s's layout of %d groups: the next tracker to heartbeat it records its shards\n", *fleet, n)
	return nil
}
