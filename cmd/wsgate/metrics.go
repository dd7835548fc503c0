package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/report"
	"github.com/wsgate/wsgate/store"
)

func init() { commands["metrics"] = runMetrics }

const metricsUsage = `Usage: wsgate metrics [connections|rejections|scaling|detailed|readiness] [flags]

Shows, read-only, the state the fleets keep in Redis: all views when none is
named, all fleets found in Redis when --fleet is not given.

Flags:
`

func runMetrics(args []string) error {
	// go-redis logs each failed dial on its own; the one error this
	// command returns already says what went wrong.
	redis.SetLogger(quietRedis{})
	return metricsTo(context.Background(), os.Stdout, args, time.Now)
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// metricsTo is runMetrics with its output and clock injected, for tests.
func metricsTo(ctx context.Context, out io.Writer, args []string, now func() time.Time) error {
	fs := flag.NewFlagSet("wsgate metrics", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), metricsUsage)
		fs.PrintDefaults()
	}
	ro := redisFlags(fs)
	fleet := fs.String("fleet", "", "show only this fleet (default: every fleet found in Redis)")
	output := fs.String("o", "table", "output: table (for people) or json (for scripts)")
	config := fs.String("config", "", "fleets file, to show each fleet's maxConnectionsPerPod (Redis does not hold it)")
	settle := fs.Duration("settle", 60*time.Second, "readiness: the epoch must be at least this old (as the scaler's --settle)")
	ratio := fs.Float64("readiness-ratio", 0.95, "readiness: share of alive instances that must have synced (as the scaler's --readiness-ratio)")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of the whole read from Redis")

	rest, err := parseFlagsRest(fs, args, 1)
	if err != nil {
		return err
	}
	var views []report.View
	if len(rest) == 1 {
		v, err := report.ParseView(rest[0])
		if err != nil {
			return err
		}
		views = []report.View{v}
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("-o %q: want table or json", *output)
	}
	if *ratio < 0 || *ratio > 1 {
		return fmt.Errorf("--readiness-ratio %g: want a share between 0 and 1", *ratio)
	}
	if *timeout <= 0 {
		return fmt.Errorf("--timeout %s: must be positive", *timeout)
	}
	configured, err := fleetsFrom(*config)
	if err != nil {
		return err
	}
	caps := map[string]int{}
	for _, f := range configured {
		caps[f.Name] = f.MaxConnectionsPerPod
	}

	cfg := ro.config()
	rdb, err := store.NewRedisClient(cfg)
	if err != nil {
		return err
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	addr := strings.Join(cfg.Addrs, ",")
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("reach Redis at %s: %w", addr, unwrapDeadline(err, *timeout))
	}
	store := store.NewStore(rdb, cfg.Prefix)
	reader := report.NewReader(store)

	// A sharded fleet's groups live under keys of their own. The groups to
	// read are all those of the layout Redis records for the fleet, of its
	// shards in the fleets file, and (without --fleet) of the scan of the
	// keyspace: a group that lost its data, or whose Redis Cluster shard
	// is down, still shows, as such.
	fleets := []string{*fleet}
	var found map[string][]string
	if *fleet == "" {
		if found, err = reader.FleetGroups(ctx); err != nil {
			return unwrapDeadline(err, *timeout)
		}
		fleets = sortedKeys(found)
		if len(fleets) == 0 {
			return fmt.Errorf("no fleet found in Redis at %s under prefix %q (is a tracker running against it? is --redis-prefix right?)", addr, cfg.Prefix)
		}
	}
	at := now()
	states := make([]report.FleetState, 0, len(fleets))
	for _, f := range fleets {
		// Unreadable (group 0's shard down), the layout is left to the
		// fleets file and the scan.
		layout, _ := store.RecordedLayout(ctx, f)
		st, err := reader.ReadGroups(ctx, f, groupsOf(f, max(configured[f].Shards, layout), found[f]), at)
		if err != nil {
			return unwrapDeadline(err, *timeout)
		}
		if !st.Snapshot.Known() {
			known, err := reader.Fleets(ctx)
			return unknownFleet(store, f, known, err)
		}
		states = append(states, st)
	}
	rep := report.Build(states, report.Options{Views: views, Caps: caps, Settle: *settle, ReadinessRatio: *ratio, Now: at})
	if *output == "json" {
		return report.WriteJSON(out, rep)
	}
	return report.WriteTable(out, rep)
}

// unknownFleet names the fleets that do exist (known, unless err), so a
// typo is obvious.
func unknownFleet(s *store.Store, fleet string, known []string, err error) error {
	list := strings.Join(known, ", ")
	if err != nil || list == "" {
		list = "none"
	}
	return fmt.Errorf("fleet %q is unknown: Redis holds no state under %s (fleets found: %s)", fleet, s.Keys(fleet).Prefix(), list)
}

// unwrapDeadline says "timed out after 5s" instead of a bare "context
// deadline exceeded" or "i/o timeout", which do not tell an operator what
// to change.
func unwrapDeadline(err error, d time.Duration) error {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("%w (timed out after %s; see --timeout)", err, d)
	}
	return err
}

// fleetsFrom reads the fleets of a fleets file, by name: their
// maxConnectionsPerPod (Redis does not hold it) and shards.
func fleetsFrom(path string) (map[string]fleets.Fleet, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	list, err := fleets.ParseFile(path, data)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	out := make(map[string]fleets.Fleet, len(list))
	for _, f := range list {
		out[f.Name] = f
	}
	return out, nil
}

// groupsOf lists the groups of fleet to read, group 0 first: the first
// shards (from the fleets file or Redis' layout; 0 when unknown) and those
// found in Redis.
func groupsOf(fleet string, shards int, found []string) []string {
	n := max(shards, 1)
	for _, g := range found {
		if _, k, ok := fleets.SplitGroup(g); ok && k+1 > n {
			n = k + 1
		}
	}
	return fleets.Fleet{Name: fleet, Shards: n}.GroupNames()
}

func sortedKeys(m map[string][]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
