package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Layout records n as the layout (the number of groups) of fleet, a
// fleet's name (its group 0), unless Redis has one recorded already, and
// returns the recorded one (layout.lua). Trackers and the scaler follow
// the recorded layout, not their own configuration: a tracker whose
// shards differ keeps out of Redis, so that no pod is counted in two
// groups (PROTOCOL.md, "Shards").
func (s *Store) Layout(ctx context.Context, fleet string, n int) (recorded int, err error) {
	if n < 1 {
		return 0, fmt.Errorf("layout %s: shards %d: want at least 1", fleet, n)
	}
	got, err := scriptLayout.Run(ctx, s.rdb, []string{s.Keys(fleet).Layout()}, n).Int()
	if err != nil {
		return 0, fmt.Errorf("layout %s: %w", fleet, err)
	}
	return got, nil
}

// ForgetLayout deletes fleet's recorded layout, so that the next tracker
// to heartbeat records its own: the offline step of changing a fleet's
// shards (README, "Sharded fleets"). It reports whether one was recorded.
func (s *Store) ForgetLayout(ctx context.Context, fleet string) (bool, error) {
	n, err := s.rdb.Del(ctx, s.Keys(fleet).Layout()).Result()
	if err != nil {
		return false, fmt.Errorf("forget layout %s: %w", fleet, err)
	}
	return n > 0, nil
}

// RecordedLayout is the layout Redis recorded for fleet, 0 when none.
func (s *Store) RecordedLayout(ctx context.Context, fleet string) (int, error) {
	n, err := s.rdb.Get(ctx, s.Keys(fleet).Layout()).Int()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("layout %s: %w", fleet, err)
	}
	return n, nil
}
