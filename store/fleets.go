package store

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
)

// fleetMarkers are the keys that exist whenever Redis holds anything of a
// fleet (the same ones Snapshot.Known looks at).
var fleetMarkers = []string{keyEpoch, keyPods, keyInstances}

// Fleets lists, sorted, the fleets Redis holds state of under this store's
// prefix; a sharded fleet's groups count as the fleet (FleetGroups lists
// them). It scans the keyspace (SCAN, never KEYS), on every master of a
// Redis Cluster, so it is for operators' tools, not for the hot path.
func (s *Store) Fleets(ctx context.Context) ([]string, error) {
	groups, err := s.FleetGroups(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(groups))
	for f := range groups {
		out = append(out, f)
	}
	sort.Strings(out)
	return out, nil
}

// FleetGroups scans the keyspace as Fleets does and returns every fleet
// Redis holds state of with the names of its groups found (fleets.GroupName;
// group 0, the fleet's own name, first, then by number). A group of a
// sharded fleet lives in its own hash slot, on Redis Cluster often on
// another master than group 0: the scan covers every master.
func (s *Store) FleetGroups(ctx context.Context) (map[string][]string, error) {
	var (
		mu    sync.Mutex
		found = map[string]map[int]bool{}
	)
	scan := func(ctx context.Context, c redis.Cmdable) error {
		for _, m := range fleetMarkers {
			// {<prefix>:<fleet>}:<marker>, any fleet (keys.go)
			iter := c.Scan(ctx, 0, globEscape("{"+s.prefix+":")+"*}:"+m, 1000).Iterator()
			for iter.Next(ctx) {
				if f, k, ok := s.groupOf(iter.Val()); ok {
					mu.Lock()
					if found[f] == nil {
						found[f] = map[int]bool{}
					}
					found[f][k] = true
					mu.Unlock()
				}
			}
			if err := iter.Err(); err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, s.rdb)
	}
	if err != nil {
		return nil, fmt.Errorf("list fleets under prefix %q: %w", s.prefix, err)
	}
	out := make(map[string][]string, len(found))
	for f, ks := range found {
		nums := make([]int, 0, len(ks))
		for k := range ks {
			nums = append(nums, k)
		}
		sort.Ints(nums)
		for _, k := range nums {
			out[f] = append(out[f], fleets.GroupName(f, k))
		}
	}
	return out, nil
}

// groupOf extracts the fleet and group number from a key
// "{<prefix>:<group>}:<name>" (group 0 for a plain fleet name).
func (s *Store) groupOf(key string) (string, int, bool) {
	rest, ok := strings.CutPrefix(key, "{"+s.prefix+":")
	if !ok {
		return "", 0, false
	}
	g, _, ok := strings.Cut(rest, "}:")
	if !ok {
		return "", 0, false
	}
	f, k, ok := fleets.SplitGroup(g)
	if !ok || !fleets.ValidName(f) {
		return "", 0, false
	}
	return f, k, true
}

// globEscape quotes the characters SCAN MATCH treats as a pattern.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
