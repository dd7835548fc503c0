package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
)

// The layout's special values (field shards of the layout hash): besides a
// recorded N >= 1, LayoutNext says "record the next caller's shards"
// (forget-layout's last step) and LayoutFrozen "record nothing; every
// tracker refuses Redis" (forget-layout while it checks the drain).
const (
	LayoutNext   = 0
	LayoutFrozen = -1
)

// layoutField is the layout hash's field: a hash, not a string, so that
// the tracker's ACL needs no command its scripts did not already use.
const layoutField = "shards"

// ErrLayoutConflict: group 0's layout and its mirror record different
// values, which no tracker resolves by itself (PROTOCOL.md, "Shards").
var ErrLayoutConflict = errors.New("the layout and its mirror differ")

// layoutMirrorKey is where fleet's layout is mirrored: group 1's tag
// (fleets.GroupName(fleet, 1)), whatever the fleet's shards, so that the
// loss of group 0's node (or slot) alone does not lose the layout.
func (s *Store) layoutMirrorKey(fleet string) string {
	return s.Keys(fleets.GroupName(fleet, 1)).Layout()
}

// Layout records n as the layout (the number of groups) of fleet, a
// fleet's name (its group 0), unless Redis has one recorded already, and
// returns the recorded one (layout.lua): trackers and the scaler follow
// the recorded layout, not their own configuration: a tracker whose
// shards differ keeps out of Redis, so that no pod is counted in two
// groups (PROTOCOL.md, "Shards"). Where group 0 has state but no layout
// (a fleet run before layouts existed) it records 1. The layout is
// mirrored in group 1's tag: a layout group 0 lost is copied back from the
// mirror, a lost mirror from group 0, and ErrLayoutConflict when both are
// there and differ. The result may be LayoutFrozen.
func (s *Store) Layout(ctx context.Context, fleet string, n int) (recorded int, err error) {
	if n < 1 {
		return 0, fmt.Errorf("layout %s: shards %d: want at least 1", fleet, n)
	}
	mirrorKey := s.layoutMirrorKey(fleet)
	mirror, err := s.rdb.HGet(ctx, mirrorKey, layoutField).Result()
	if errors.Is(err, redis.Nil) {
		mirror, err = "", nil
	}
	if err != nil {
		return 0, fmt.Errorf("layout %s: mirror: %w", fleet, err)
	}
	k := s.Keys(fleet)
	got, err := scriptLayout.Run(ctx, s.rdb, []string{k.Layout(), k.Epoch(), k.Instances()}, n, mirror).Int()
	if err != nil {
		return 0, fmt.Errorf("layout %s: %w", fleet, err)
	}
	if mirror == strconv.Itoa(got) {
		return got, nil
	}
	m, err := scriptLayoutMirror.Run(ctx, s.rdb, []string{mirrorKey}, got).Int()
	if err != nil {
		return 0, fmt.Errorf("layout %s: mirror: %w", fleet, err)
	}
	if m != got {
		return 0, fmt.Errorf("layout %s: %d recorded, %d in the mirror (%s): %w", fleet, got, m, mirrorKey, ErrLayoutConflict)
	}
	return got, nil
}

// SetLayout writes v (a layout, LayoutNext or LayoutFrozen) into fleet's
// layout and its mirror, the mirror first: forget-layout's writes, which
// override whatever is recorded.
func (s *Store) SetLayout(ctx context.Context, fleet string, v int) error {
	for _, key := range []string{s.layoutMirrorKey(fleet), s.Keys(fleet).Layout()} {
		if err := s.rdb.HSet(ctx, key, layoutField, v).Err(); err != nil {
			return fmt.Errorf("layout %s: set %s to %d: %w", fleet, key, v, err)
		}
	}
	return nil
}

// RecordedLayout is the layout Redis recorded for fleet, 0 when none (or
// LayoutNext), LayoutFrozen when frozen; group 0's, else its mirror's.
func (s *Store) RecordedLayout(ctx context.Context, fleet string) (int, error) {
	for _, key := range []string{s.Keys(fleet).Layout(), s.layoutMirrorKey(fleet)} {
		n, err := s.rdb.HGet(ctx, key, layoutField).Int()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("layout %s: %w", fleet, err)
		}
		return n, nil
	}
	return 0, nil
}
