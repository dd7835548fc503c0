package store

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/wsgate/wsgate/fleets"
)

// This file reads a fleet as a whole: a fleet with shards N is N groups,
// each a fleet of its own to the store (fleets.GroupName), so what the
// scaler and `wsgate metrics` show of the fleet is read group by group and
// summed here. The groups live in different hash slots (on Redis Cluster,
// on different nodes): each group is one call, pipelining cannot join them.
// A fleet of one shard reads exactly what it always did: its one group is
// the fleet itself, and the sums are that group's figures unchanged.

// FleetSummary is a fleet's summary over its groups.
type FleetSummary struct {
	// Summary is the fleet's, named after it: see SumSummaries for how
	// each field combines the groups'.
	Summary
	// Groups are the groups' own summaries, group 0 first. Readiness is
	// judged on each (its own epoch and syncs), not on the sum.
	Groups []Summary
}

// FleetSummary reads the summary of every group of f and sums them. An
// unreadable group fails the whole read: a sum without it would undercount
// the fleet, and the scaler must not act on that.
func (s *Store) FleetSummary(ctx context.Context, f fleets.Fleet, now time.Time) (FleetSummary, error) {
	names := f.GroupNames()
	groups := make([]Summary, 0, len(names))
	for _, g := range names {
		sum, err := s.Summary(ctx, g, now)
		if err != nil {
			return FleetSummary{}, fmt.Errorf("fleet %s: %w", f.Name, err)
		}
		groups = append(groups, sum)
	}
	return FleetSummary{Summary: SumSummaries(f.Name, groups), Groups: groups}, nil
}

// SumSummaries combines the summaries of fleet's groups into the fleet's.
// One group is returned as it is (renamed to fleet). For several:
//   - Live, Pods, Ready, Draining, Placeable and every rejection window are
//     sums: each pod and connection is counted in exactly one group (a pod
//     belongs to one group), a refusal in each group Redis was asked in
//     (tracker/PROTOCOL.md, "What crosses groups").
//   - Alive and Left are the highest of any group: every tracker heartbeats
//     every group, so each group counts the same instances; adding them
//     would multiply the fleet's trackers by its shards.
//   - Synced and Published are the lowest of any group: the fleet has
//     re-synced only as far as its least re-synced group.
//   - Epoch is "" while any group has none (the fleet is not whole yet),
//     else the groups' epochs joined by ","; a new epoch of any group makes
//     a new one for the fleet. Its start (EpochStart) is the latest of the
//     groups' starts, so the fleet is as young as its youngest group.
//   - RedisNow is group 0's clock.
func SumSummaries(fleet string, groups []Summary) Summary {
	if len(groups) == 1 {
		out := groups[0]
		out.Fleet = fleet
		return out
	}
	out := Summary{Fleet: fleet, Rejections: map[Reason]Windows{}}
	epochs := make([]string, 0, len(groups))
	whole := true
	for i, g := range groups {
		out.Live += g.Live
		out.Pods += g.Pods
		out.Ready += g.Ready
		out.Draining += g.Draining
		out.Placeable += g.Placeable
		out.Alive = max(out.Alive, g.Alive)
		out.Left = max(out.Left, g.Left)
		if i == 0 || g.Synced < out.Synced {
			out.Synced = g.Synced
		}
		if i == 0 || g.Published < out.Published {
			out.Published = g.Published
		}
		for r, w := range g.Rejections {
			t := out.Rejections[r]
			t.M5, t.M15, t.H1 = t.M5+w.M5, t.M15+w.M15, t.H1+w.H1
			out.Rejections[r] = t
		}
		whole = whole && g.Epoch != ""
		epochs = append(epochs, g.Epoch)
		if i == 0 {
			out.RedisNow = g.RedisNow
		}
	}
	if whole && len(epochs) > 0 {
		// The youngest group's epoch first: EpochStart reads the leading
		// "<ms>-" of an epoch id (epochStart), so the fleet's start is the
		// latest of its groups'.
		sort.SliceStable(epochs, func(i, j int) bool { return epochStart(epochs[i]).After(epochStart(epochs[j])) })
		out.Epoch = strings.Join(epochs, ",")
	}
	return out
}

// FleetSnapshot is a fleet's snapshot over its groups.
type FleetSnapshot struct {
	// Snapshot is the groups' snapshots merged (MergeSnapshots).
	Snapshot
	// Groups are the groups' own snapshots, group 0 first.
	Groups []Snapshot
}

// FleetSnapshot reads the snapshot of every group of f and merges them.
func (s *Store) FleetSnapshot(ctx context.Context, f fleets.Fleet, now time.Time) (FleetSnapshot, error) {
	return s.GroupsSnapshot(ctx, f.Name, f.GroupNames(), now)
}

// GroupsSnapshot reads the snapshots of fleet's groups named in groups
// (group 0 first) and merges them: for readers that learnt the groups from
// Redis (FleetGroups) rather than from a fleets file.
func (s *Store) GroupsSnapshot(ctx context.Context, fleet string, groups []string, now time.Time) (FleetSnapshot, error) {
	snaps := make([]Snapshot, 0, len(groups))
	for _, g := range groups {
		snap, err := s.Snapshot(ctx, g, now)
		if err != nil {
			return FleetSnapshot{}, fmt.Errorf("fleet %s: %w", fleet, err)
		}
		snaps = append(snaps, snap)
	}
	return FleetSnapshot{Snapshot: MergeSnapshots(fleet, snaps), Groups: snaps}, nil
}

// MergeSnapshots combines the snapshots of fleet's groups into one view of
// the fleet. One group is returned as it is (renamed to fleet). For
// several: pods, loads and live connections add up (a pod is in one
// group); an instance, present in every group it heartbeats, becomes one
// entry holding its connections of all groups, its rejections summed and
// its lease the earliest of them (where it is closest to being reaped);
// the fleet's rejections are summed. Epoch and Synced are group 0's, and
// so are RedisNow and the recovery wait, except that the fleet is
// recovering while any group is (the latest RecoveryUntil, confirmed only
// once every group is): the per-group view is Groups.
func MergeSnapshots(fleet string, groups []Snapshot) Snapshot {
	if len(groups) == 1 {
		out := groups[0]
		out.Fleet = fleet
		return out
	}
	out := Snapshot{Fleet: fleet, Pods: map[string]fleets.Pod{}, Load: map[string]int{}, Rejections: map[Reason]Windows{}}
	insts := map[string]*InstanceState{}
	var ids []string
	for i, g := range groups {
		if i == 0 {
			out.Epoch, out.Synced, out.RedisNow = g.Epoch, g.Synced, g.RedisNow
			out.RecoveryConfirmed = true
		}
		for a, p := range g.Pods {
			out.Pods[a] = p
		}
		for a, n := range g.Load {
			out.Load[a] += n
		}
		out.Live += g.Live
		addWindows(out.Rejections, g.Rejections)
		if g.RecoveryUntil.After(out.RecoveryUntil) {
			out.RecoveryUntil = g.RecoveryUntil
		}
		if !g.RecoveryUntil.IsZero() {
			out.RecoveryConfirmed = out.RecoveryConfirmed && g.RecoveryConfirmed
		}
		for _, in := range g.Instances {
			m := insts[in.ID]
			if m == nil {
				m = &InstanceState{ID: in.ID, LeaseUntil: in.LeaseUntil, Live: map[string]int{},
					Established: map[string]int{}, Rejections: map[Reason]Windows{}}
				insts[in.ID] = m
				ids = append(ids, in.ID)
			}
			if in.LeaseUntil.Before(m.LeaseUntil) {
				m.LeaseUntil = in.LeaseUntil
			}
			for a, n := range in.Live {
				m.Live[a] += n
			}
			for a, n := range in.Established {
				m.Established[a] += n
			}
			addWindows(m.Rejections, in.Rejections)
		}
	}
	if out.RecoveryUntil.IsZero() {
		out.RecoveryConfirmed = false
	}
	sort.Strings(ids)
	for _, id := range ids {
		out.Instances = append(out.Instances, *insts[id])
	}
	return out
}

func addWindows(to, from map[Reason]Windows) {
	for r, w := range from {
		t := to[r]
		t.M5, t.M15, t.H1 = t.M5+w.M5, t.M15+w.M15, t.H1+w.H1
		to[r] = t
	}
}

// FleetPodLoads reads the live connections per pod of every group of f
// (PodLoads, one call per group): a pod is in one group, so the maps join
// without overlap.
func (s *Store) FleetPodLoads(ctx context.Context, f fleets.Fleet) (map[string]int, error) {
	var out map[string]int
	for _, g := range f.GroupNames() {
		loads, err := s.PodLoads(ctx, g)
		if err != nil {
			return nil, fmt.Errorf("fleet %s: %w", f.Name, err)
		}
		if out == nil {
			out = loads
			continue
		}
		for pod, n := range loads {
			out[pod] += n
		}
	}
	return out, nil
}
