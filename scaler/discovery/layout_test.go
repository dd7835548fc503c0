package discovery_test

import (
	"context"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
)

// layouts stands in for the store's layout record (store.Store.Layout,
// the shards branch) until it is merged: SET NX of the fleet's layout in
// group 0's slot, then GET.
type layouts struct {
	*store.Store
	rdb redis.Cmdable
}

func (l layouts) Layout(ctx context.Context, fleet string, n int) (int, error) {
	c := l.rdb
	key := l.Keys(fleet).Prefix() + "layout"
	if err := c.SetNX(ctx, key, n, 0).Err(); err != nil {
		return 0, err
	}
	v, err := c.Get(ctx, key).Result()
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}
