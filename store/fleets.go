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
// prefix. It scans the keyspace (SCAN, never KEYS), on every master of a
// Redis Cluster, so it is for operators' tools, not for the hot path.
func (s *Store) Fleets(ctx context.Context) ([]string, error) {
	var (
		mu    sync.Mutex
		found = map[string]bool{}
	)
	scan := func(ctx context.Context, c redis.Cmdable) error {
		for _, m := range fleetMarkers {
			// {<prefix>:<fleet>}:<marker>, any fleet (keys.go)
			iter := c.Scan(ctx, 0, globEscape("{"+s.prefix+":")+"*}:"+m, 1000).Iterator()
			for iter.Next(ctx) {
				if f, ok := s.fleetOf(iter.Val()); ok {
					mu.Lock()
					found[f] = true
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
	out := make([]string, 0, len(found))
	for f := range found {
		out = append(out, f)
	}
	sort.Strings(out)
	return out, nil
}

// fleetOf extracts the fleet from a key "{<prefix>:<fleet>}:<name>".
func (s *Store) fleetOf(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, "{"+s.prefix+":")
	if !ok {
		return "", false
	}
	f, _, ok := strings.Cut(rest, "}:")
	if !ok || !fleets.ValidName(f) {
		return "", false
	}
	return f, true
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
