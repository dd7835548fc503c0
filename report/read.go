package report

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/wsgate/wsgate/store"
)

// FleetState is everything the views of one fleet are built from.
type FleetState struct {
	// Snapshot is the fleet's state: of a sharded fleet, its reachable
	// groups' snapshots merged (store.MergeSnapshots).
	Snapshot store.Snapshot
	// Groups are a sharded fleet's groups, group 0 first, each with its
	// own snapshot or the error that kept it unread; nil for a fleet read
	// as one group.
	Groups []GroupState
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

// GroupState is one group of a sharded fleet as read.
type GroupState struct {
	Name     string
	Snapshot store.Snapshot
	// Err is why the group could not be read (its Redis Cluster shard down
	// or unreachable); Snapshot is then empty.
	Err error
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
	// FleetGroups lists them with the groups found of each (a sharded
	// fleet's groups live under keys of their own).
	FleetGroups(ctx context.Context) (map[string][]string, error)
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

// FleetGroups lists the fleets Redis holds state of with their groups
// found there (store.Store.FleetGroups): group 0, named like the fleet,
// first.
func (r *Reader) FleetGroups(ctx context.Context) (map[string][]string, error) {
	return r.store.FleetGroups(ctx)
}

// Read returns the state of fleet as of now. Whether the fleet exists is
// the caller's question (FleetState.Snapshot.Known).
func (r *Reader) Read(ctx context.Context, fleet string, now time.Time) (FleetState, error) {
	return r.ReadGroups(ctx, fleet, []string{fleet}, now)
}

// ReadGroups returns the state of fleet as of now from its groups, group 0
// (the fleet's own name) first: one Snapshot per group, merged. With one
// group it is Read. With several, a group that cannot be read is reported
// as such (GroupState.Err) and left out of the merged figures, so that an
// operator sees the rest of the fleet while one Redis Cluster shard is
// down; only when no group can be read is it an error. The scaler's
// records live with group 0.
func (r *Reader) ReadGroups(ctx context.Context, fleet string, groups []string, now time.Time) (FleetState, error) {
	var st FleetState
	if len(groups) == 1 {
		snap, err := r.store.Snapshot(ctx, groups[0], now)
		if err != nil {
			return FleetState{}, err
		}
		snap.Fleet = fleet
		st.Snapshot = snap
	} else {
		var (
			read  []store.Snapshot
			first error
		)
		for _, g := range groups {
			snap, err := r.store.Snapshot(ctx, g, now)
			st.Groups = append(st.Groups, GroupState{Name: g, Snapshot: snap, Err: err})
			if err != nil {
				first = cmp.Or(first, err)
				continue
			}
			read = append(read, snap)
		}
		if len(read) == 0 {
			return FleetState{}, first
		}
		st.Snapshot = store.MergeSnapshots(fleet, read)
		if st.Groups[0].Err != nil {
			// The scaler's records are in group 0's slot: unreadable too.
			return st, nil
		}
	}
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
