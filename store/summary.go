package store

import (
	"context"
	"fmt"
	"time"
)

// Summary is what the scaler decides on, read in one round trip whatever
// the number of pods.
type Summary struct {
	Fleet string
	// Live is the live connections of the instances Redis counts (alive,
	// or past their lease and not reaped), as each one's last heartbeat in
	// this epoch published them: up to a heartbeat behind the admissions
	// (tracker/PROTOCOL.md, "The fleet's live count").
	Live int64
	// Pods, Ready, Draining count the registry: Ready includes Draining.
	Pods, Ready, Draining int64
	// Placeable is the number of ready, non-draining pods.
	Placeable int64
	// Epoch identifies the current Redis lifetime ("" when none yet).
	Epoch string
	// Synced is how many instances re-published their state in Epoch.
	Synced int64
	// Alive is how many instances hold an unexpired lease.
	Alive int64
	// Published is how many of them published their total in Epoch: an
	// alive instance without one (a tracker of a version before the
	// heartbeats published totals) is missing from Live.
	Published int64
	// Left counts the instances that left on their own in this epoch (a
	// drained Envoy pod): a drop of Alive they explain lost no count.
	Left       int64
	Rejections map[Reason]Windows
	// RedisNow is Redis' clock when the summary was read.
	RedisNow time.Time
}

// EpochStart is when the current epoch began by Redis' clock (zero when
// unknown): compare it with RedisNow, not with another host's clock.
func (s Summary) EpochStart() time.Time { return epochStart(s.Epoch) }

// Known reports whether Redis holds anything of the fleet.
func (s Summary) Known() bool { return s.Epoch != "" || s.Pods > 0 || s.Alive > 0 }

// summaryKeys are summary.lua's KEYS, in its order: the rejection rings
// last, one per reason in Reasons' order.
func summaryKeys(k Keys) []string {
	keys := []string{k.Stats(), k.Avail(), k.Epoch(), k.Instances()}
	for _, r := range Reasons {
		keys = append(keys, k.Rej(r))
	}
	return keys
}

// Summary reads the fleet's Summary as of now.
func (s *Store) Summary(ctx context.Context, fleet string, now time.Time) (Summary, error) {
	fk := s.Keys(fleet)
	// ARGV, in summary.lua's order: prefix, (unused), bucket, w1, w2, w3.
	res, err := scriptSummary.Run(ctx, s.rdb, summaryKeys(fk), fk.Prefix(), now.UnixMilli(), Bucket(now),
		windowBuckets(Window5m), windowBuckets(Window15m), windowBuckets(Window1h)).Slice()
	if err != nil {
		return Summary{}, fmt.Errorf("summary %s: %w", fleet, err)
	}
	return decodeSummary(fleet, res)
}

// summary.lua's reply, by position: the counts, then three windows per
// reason, then Redis' clock, the instances that left and the alive ones
// that published a total.
const (
	summaryLive = iota
	summaryPods
	summaryReady
	summaryDraining
	summaryPlaceable
	summaryEpoch
	summarySynced
	summaryAlive
	summaryRejections // 5m, 15m, 1h of each reason, in Reasons' order
)

func decodeSummary(fleet string, res []any) (Summary, error) {
	rejEnd := summaryRejections + 3*len(Reasons)
	redisNow, left, published := rejEnd, rejEnd+1, rejEnd+2
	if len(res) != published+1 {
		return Summary{}, fmt.Errorf("summary %s: unexpected reply of %d elements", fleet, len(res))
	}
	out := Summary{Fleet: fleet, Rejections: map[Reason]Windows{}}
	out.Live, out.Pods, out.Ready = i64(res[summaryLive]), i64(res[summaryPods]), i64(res[summaryReady])
	out.Draining, out.Placeable = i64(res[summaryDraining]), i64(res[summaryPlaceable])
	out.Epoch, _ = res[summaryEpoch].(string)
	out.Synced, out.Alive = i64(res[summarySynced]), i64(res[summaryAlive])
	out.RedisNow = time.UnixMilli(i64(res[redisNow]))
	out.Left, out.Published = i64(res[left]), i64(res[published])
	for k, r := range Reasons {
		b := summaryRejections + 3*k
		out.Rejections[r] = Windows{M5: i64(res[b]), M15: i64(res[b+1]), H1: i64(res[b+2])}
	}
	return out, nil
}
