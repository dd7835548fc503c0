package report

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
)

// FleetState is everything the views of one fleet are built from.
type FleetState struct {
	Snapshot store.Snapshot
	// Scalers are the scaler's last decisions, one per desiredReplicas
	// trigger evaluated within the scaler's decision TTL, by trigger ID;
	// empty when no scaler has written one.
	Scalers []ScalerRecord
	// ScaleDown is the scaler's scale-down order, first candidate first;
	// nil when the scaledown set is absent.
	ScaleDown []Ranked
}

// ScalerRecord is one decoded {wsgate:F}:scaler:<trigger> hash.
type ScalerRecord struct {
	// Trigger is the trigger's ID: <namespace>/<ScaledObject>@<params hash>.
	Trigger string
	// ScaledObject is namespace/name; Params the trigger's policy parameters.
	ScaledObject, Params string
	// DrainFloor is the highest fresh recommendation among the fleet's
	// triggers when this one was evaluated, what the scale-down gate acted
	// on, and DrivenBy the trigger that wanted it; nil and "" without a
	// gate or while held.
	DrainFloor *int
	DrivenBy   string
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

// Reader reads fleet state from Redis, read-only: one Snapshot script, one
// pipeline of the scaler's index and scaledown set, one of the triggers'
// decision hashes per fleet.
type Reader struct {
	store *store.Store
}

// NewReader returns a Reader on store.
func NewReader(store *store.Store) *Reader { return &Reader{store: store} }

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
		index *redis.ZSliceCmd
		down  *redis.ZSliceCmd
	)
	// Every key shares the fleet's hash slot, so each pipeline reaches a
	// single node even in Redis Cluster. The names are the scaler's
	// (scaler/decision.go).
	_, err = r.store.Client().Pipelined(ctx, func(pl redis.Pipeliner) error {
		index = pl.ZRangeWithScores(ctx, p+"scalers", 0, -1)
		down = pl.ZRangeWithScores(ctx, p+"scaledown", 0, -1)
		return nil
	})
	if err != nil {
		return FleetState{}, fmt.Errorf("read scaler state of %s: %w", fleet, err)
	}
	if st.Scalers, err = r.decisions(ctx, fleet, index.Val()); err != nil {
		return FleetState{}, err
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

// decisions reads the hashes of the indexed triggers, skipping those that
// expired (a deleted ScaledObject's, an old probe's): sorted by trigger ID.
func (r *Reader) decisions(ctx context.Context, fleet string, index []redis.Z) ([]ScalerRecord, error) {
	if len(index) == 0 {
		return nil, nil
	}
	p := r.store.KeyPrefix(fleet)
	ids := make([]string, 0, len(index))
	for _, z := range index {
		if id, ok := z.Member.(string); ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	_, err := r.store.Client().Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = pl.HGetAll(ctx, p+"scaler:"+id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read scaler decisions of %s: %w", fleet, err)
	}
	var out []ScalerRecord
	for i, c := range cmds {
		h := c.Val()
		if len(h) == 0 {
			continue
		}
		rec, err := decodeScaler(h)
		if err != nil {
			return nil, fmt.Errorf("read scaler decision %s of %s: %w", ids[i], fleet, err)
		}
		rec.Trigger = ids[i]
		out = append(out, rec)
	}
	return out, nil
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
	rec.Recommended, rec.Reported, rec.DrainFloor = opt("recommended"), opt("reported"), opt("drainFloor")
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
	rec.Reason, rec.ScaledObject, rec.Params, rec.DrivenBy = h["reason"], h["scaledObject"], h["params"], h["drivenBy"]
	return rec, nil
}
