package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/wsgate/wsgate/fleets"
)

// InstanceState is one tracker instance as Redis knows it.
type InstanceState struct {
	ID         string
	LeaseUntil time.Time
	Live       map[string]int // pod -> connections
	// Established is pod -> established connections: those the instance
	// counted established at its last heartbeat, and those it admitted since.
	Established map[string]int
	Rejections  map[Reason]Windows
	// Published says that the instance's last heartbeat in this epoch
	// published its total, which the scaler's live count sums (a tracker
	// of a version before that publishes none).
	Published bool
}

// Snapshot is the whole state of one fleet, for operators.
type Snapshot struct {
	Fleet string
	Pods  map[string]fleets.Pod // address -> registry entry
	Load  map[string]int        // address -> live connections, all instances (avail and load together)
	// Live is the sum of Load: Redis' count of live connections, exact at
	// the moment of the snapshot (Summary.Live, the heartbeats' totals,
	// trails it by up to a heartbeat).
	Live       int64
	Epoch      string
	Synced     []string
	Instances  []InstanceState // sorted by id
	Rejections map[Reason]Windows
	// RedisNow is Redis' clock when the snapshot was read: leases are
	// judged by it.
	RedisNow time.Time
	// RecoveryUntil is the end of the epoch's recovery wait (its `until`,
	// Redis' clock): before it, the admit script grants nothing. Zero when
	// there is no epoch.
	RecoveryUntil time.Time
	// RecoveryConfirmed: a tracker confirmed the recovery wait on its own
	// clock (its `confirmed`); until then the admit script grants nothing
	// either, whatever Redis' clock says.
	RecoveryConfirmed bool
}

// Known reports whether Redis holds anything of the fleet.
func (s Snapshot) Known() bool { return s.Epoch != "" || len(s.Pods) > 0 || len(s.Instances) > 0 }

// snapshotKeys are snapshot.lua's KEYS, in its order.
func snapshotKeys(k Keys) []string {
	return []string{k.Pods(), k.Load(), k.Instances(), k.Epoch(), k.Avail()}
}

// Snapshot reads everything of fleet in one round trip (snapshot.lua).
func (s *Store) Snapshot(ctx context.Context, fleet string, now time.Time) (Snapshot, error) {
	fk := s.Keys(fleet)
	// ARGV, in snapshot.lua's order: prefix, bucket, w1, w2, w3, then the
	// reasons.
	args := []any{fk.Prefix(), Bucket(now), windowBuckets(Window5m), windowBuckets(Window15m), windowBuckets(Window1h)}
	for _, r := range Reasons {
		args = append(args, string(r))
	}
	res, err := scriptSnapshot.Run(ctx, s.rdb, snapshotKeys(fk), args...).Slice()
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", fleet, err)
	}
	return decodeSnapshot(fleet, res)
}

// snapshot.lua's reply, by position.
const (
	snapPods          = iota // (address, json) per pod
	snapLoad                 // (pod, count) of the pods not placeable
	snapAvail                // (pod, count) of the placeable pods above 0
	snapEpoch                // the epoch's id
	snapSynced               // the ids synced in it
	snapInstances            // {id, lease ms, live, pending, windows, total} per instance
	snapRejections           // (reason, 5m, 15m, 1h) per reason
	snapRedisNow             // Redis' clock (ms)
	snapRecoveryUntil        // the end of the epoch's recovery wait (ms; 0: none)
	snapConfirmed            // 1 when a tracker confirmed the wait
	snapReplyLen
)

// The fields of one instance in snapshot.lua's reply, by position.
const (
	snapInstID = iota
	snapInstLease
	snapInstLive
	snapInstPending
	snapInstWindows
	snapInstTotal // nil when it published none in this epoch
	snapInstLen
)

func decodeSnapshot(fleet string, res []any) (Snapshot, error) {
	if len(res) != snapReplyLen {
		return Snapshot{}, fmt.Errorf("snapshot %s: unexpected reply of %d elements", fleet, len(res))
	}
	out := Snapshot{Fleet: fleet, Pods: map[string]fleets.Pod{}}
	pods := pairs(res[snapPods])
	for addr, doc := range pods {
		var pod fleets.Pod
		if err := json.Unmarshal([]byte(doc), &pod); err != nil {
			return Snapshot{}, fmt.Errorf("snapshot %s: pod %s: %w", fleet, addr, err)
		}
		pod.Addr = addr
		out.Pods[addr] = pod
	}
	out.Load = counts(res[snapLoad]) // pods that are not placeable
	for pod, n := range counts(res[snapAvail]) {
		out.Load[pod] = n // placeable pods: their counts live in avail
	}
	for _, n := range out.Load {
		out.Live += int64(n)
	}
	out.Epoch, _ = res[snapEpoch].(string)
	out.Synced = strs(res[snapSynced])
	sort.Strings(out.Synced)
	insts, _ := res[snapInstances].([]any)
	for _, v := range insts {
		f, _ := v.([]any)
		if len(f) != snapInstLen {
			return Snapshot{}, fmt.Errorf("snapshot %s: malformed instance entry", fleet)
		}
		id, _ := f[snapInstID].(string)
		lease, _ := strconv.ParseFloat(fmt.Sprint(f[snapInstLease]), 64)
		in := InstanceState{ID: id, LeaseUntil: time.UnixMilli(int64(lease)), Live: counts(f[snapInstLive]),
			Established: map[string]int{}, Rejections: windows(f[snapInstWindows]), Published: f[snapInstTotal] != nil}
		pending := counts(f[snapInstPending])
		for pod, n := range in.Live {
			if e := n - pending[pod]; e > 0 {
				in.Established[pod] = e
			}
		}
		out.Instances = append(out.Instances, in)
	}
	sort.Slice(out.Instances, func(i, j int) bool { return out.Instances[i].ID < out.Instances[j].ID })
	out.Rejections = windows(res[snapRejections])
	out.RedisNow = time.UnixMilli(i64(res[snapRedisNow]))
	if ms := i64(res[snapRecoveryUntil]); ms > 0 {
		out.RecoveryUntil = time.UnixMilli(ms)
	}
	out.RecoveryConfirmed = i64(res[snapConfirmed]) == 1
	return out, nil
}
