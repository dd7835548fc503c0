package report

import (
	"context"
	"fmt"
	"strconv"
	"time"

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

// Store is what a Reader needs of the fleets' state in Redis:
// *store.Store.
type Store interface {
	// Fleets lists the fleets Redis holds state of.
	Fleets(ctx context.Context) ([]string, error)
	// Snapshot reads the whole state of a fleet.
	Snapshot(ctx context.Context, fleet string, now time.Time) (store.Snapshot, error)
	// ScalerState reads the scaler's decisions and scale-down order.
	ScalerState(ctx context.Context, fleet string) (store.ScalerState, error)
}

// Reader reads fleet state from Redis, read-only: one Snapshot script, one
// pipeline of the scaler's index and scaledown set, one of the triggers'
// decision hashes per fleet.
type Reader struct {
	store Store
}

// NewReader returns a Reader on store.
func NewReader(store Store) *Reader { return &Reader{store: store} }

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
	sc, err := r.store.ScalerState(ctx, fleet)
	if err != nil {
		return FleetState{}, err
	}
	for _, d := range sc.Decisions {
		rec, err := decodeScaler(d.Fields)
		if err != nil {
			return FleetState{}, fmt.Errorf("read scaler decision %s of %s: %w", d.Trigger, fleet, err)
		}
		rec.Trigger = d.Trigger
		st.Scalers = append(st.Scalers, rec)
	}
	if sc.ScaleDown != nil {
		st.ScaleDown = make([]Ranked, 0, len(sc.ScaleDown))
		for _, p := range sc.ScaleDown {
			st.ScaleDown = append(st.ScaleDown, Ranked{Pod: p.Pod, Priority: p.Priority})
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
