package report

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/tracker"
)

// FleetState is everything the views of one fleet are built from.
type FleetState struct {
	Snapshot tracker.Snapshot
	// Scaler is the scaler's last recommendation, nil when its hash is absent.
	Scaler *ScalerRecord
	// ScaleDown is the scaler's scale-down order, first candidate first;
	// nil when the scaledown set is absent.
	ScaleDown []Ranked
}

// ScalerRecord is the decoded {wsgate:F}:scaler hash.
type ScalerRecord struct {
	// Recommended and Reported are nil while the scaler holds its metric.
	Recommended *int
	Reported    *int
	// Ready is false while the scaler holds its metric (readiness).
	Ready     bool
	ReadyPods int
	Updated   time.Time // zero when the field is missing
	Reason    string
}

// Ranked is one member of the scaledown set.
type Ranked struct {
	Pod      string
	Priority float64
}

// Reader reads fleet state from Redis, read-only: one Snapshot script and
// one pipeline of the scaler's two keys per fleet.
type Reader struct {
	store *tracker.Store
}

// NewReader returns a Reader on store.
func NewReader(store *tracker.Store) *Reader { return &Reader{store: store} }

// Fleets lists the fleets Redis holds state of, sorted.
func (r *Reader) Fleets(ctx context.Context) ([]string, error) { return r.store.Fleets(ctx) }

// Read returns the state of fleet as of now. Whether the fleet exists is
// the caller's question (FleetState.Snapshot.Known).
func (r *Reader) Read(ctx context.Context, fleet string, now time.Time) (FleetState, error) {
	snap, err := r.store.Snapshot(ctx, fleet, now)
	if err != nil {
		return FleetState{}, err
	}
	st := FleetState{Snapshot: snap}
	p := r.store.KeyPrefix(fleet)
	var (
		hash *redis.MapStringStringCmd
		down *redis.ZSliceCmd
	)
	// Both keys share the fleet's hash slot, so one pipeline reaches them
	// on a single node even in Redis Cluster.
	_, err = r.store.Client().Pipelined(ctx, func(pl redis.Pipeliner) error {
		hash = pl.HGetAll(ctx, p+"scaler")
		down = pl.ZRangeWithScores(ctx, p+"scaledown", 0, -1)
		return nil
	})
	if err != nil {
		return FleetState{}, fmt.Errorf("read scaler state of %s: %w", fleet, err)
	}
	if h := hash.Val(); len(h) > 0 {
		rec, err := decodeScaler(h)
		if err != nil {
			return FleetState{}, fmt.Errorf("read scaler state of %s: %w", fleet, err)
		}
		st.Scaler = &rec
	}
	if zs := down.Val(); len(zs) > 0 {
		st.ScaleDown = make([]Ranked, 0, len(zs))
		for _, z := range zs {
			pod, _ := z.Member.(string)
			st.ScaleDown = append(st.ScaleDown, Ranked{Pod: pod, Priority: z.Score})
		}
	}
	return st, nil
}

func decodeScaler(h map[string]string) (ScalerRecord, error) {
	var rec ScalerRecord
	var err error
	num := func(field string) int {
		v, ok := h[field]
		if !ok || err != nil {
			return 0
		}
		n, e := strconv.ParseFloat(v, 64)
		if e != nil {
			err = fmt.Errorf("scaler field %s=%q: not a number", field, v)
		}
		return int(n)
	}
	opt := func(field string) *int {
		if _, ok := h[field]; !ok {
			return nil
		}
		n := num(field)
		return &n
	}
	rec.Recommended, rec.Reported = opt("recommended"), opt("reported")
	rec.ReadyPods = num("readyPods")
	if ms := num("updatedMs"); ms > 0 {
		rec.Updated = time.UnixMilli(int64(ms))
	}
	if err != nil {
		return ScalerRecord{}, err
	}
	if v, ok := h["ready"]; ok {
		b, e := strconv.ParseBool(v)
		if e != nil {
			return ScalerRecord{}, fmt.Errorf("scaler field ready=%q: not a boolean", v)
		}
		rec.Ready = b
	}
	rec.Reason = h["reason"]
	return rec, nil
}
