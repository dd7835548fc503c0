package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file holds what the scaler reads and writes besides the trackers'
// state: its decision records (decision_record.lua, decision_others.lua),
// its scale-down order, the fleet's events channel and the per-pod loads it
// exports as metrics; and what `wsgate metrics` reads of them.

// DecisionRecord is one desiredReplicas trigger's decision, as
// RecordDecision writes it (POLICY.md, "Scale-down gate and the scaler
// hashes").
type DecisionRecord struct {
	Fleet   string
	Trigger string
	// Now is when it was evaluated, by the scaler's clock.
	Now time.Time
	// TTL is how long the record outlives Now; records not renewed within
	// it leave the index.
	TTL time.Duration
	// Fields are the hash's fields and values.
	Fields map[string]any
}

// RecordDecision writes rec: the trigger's hash alone (the legacy
// whole-fleet hash is deleted), its TTL and its place in the index.
func (s *Store) RecordDecision(ctx context.Context, rec DecisionRecord) error {
	fk := s.Keys(rec.Fleet)
	// ARGV, in decision_record.lua's order: trigger, now ms, ttl s, cutoff
	// ms, then (field, value) pairs.
	args := []any{rec.Trigger, rec.Now.UnixMilli(), int64(rec.TTL / time.Second), rec.Now.Add(-rec.TTL).UnixMilli()}
	for k, v := range rec.Fields {
		args = append(args, k, v)
	}
	keys := []string{fk.Scaler(rec.Trigger), fk.Scalers(), fk.LegacyScaler()}
	if err := scriptDecisionRecord.Run(ctx, s.rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("record decision %s of %s: %w", rec.Trigger, rec.Fleet, err)
	}
	return nil
}

// OthersRequest asks for the recommendations of Fleet's triggers other
// than Trigger recorded since Since.
type OthersRequest struct {
	Fleet   string
	Trigger string
	Since   time.Time
}

// OtherDecisions reads the recommendations req asks for, of the triggers
// whose hash still holds one: trigger -> recommended, as recorded.
func (s *Store) OtherDecisions(ctx context.Context, req OthersRequest) (map[string]string, error) {
	fk := s.Keys(req.Fleet)
	// KEYS: the index; ARGV: the decision hashes' prefix, cutoff ms, own
	// trigger. The reply: (trigger, recommended) pairs.
	vals, err := scriptDecisionOthers.Run(ctx, s.rdb, []string{fk.Scalers()}, fk.Scaler(""), req.Since.UnixMilli(), req.Trigger).StringSlice()
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(vals)/2)
	for i := 0; i+1 < len(vals); i += 2 {
		out[vals[i]] = vals[i+1]
	}
	return out, nil
}

// Decision is one trigger's decision hash as recorded.
type Decision struct {
	Trigger string
	Fields  map[string]string
}

// RankedPod is one member of the scale-down order.
type RankedPod struct {
	Pod      string
	Priority float64
}

// ScalerState is what the scaler recorded of a fleet.
type ScalerState struct {
	// Decisions are the indexed triggers' hashes, sorted by trigger; those
	// that expired (a deleted ScaledObject's, an old probe's) are left out.
	Decisions []Decision
	// ScaleDown is the scale-down order, first to go first; nil when there
	// is none.
	ScaleDown []RankedPod
}

// ScalerState reads the scaler's records of fleet in two round trips: the
// index and the scale-down order, then the indexed hashes.
func (s *Store) ScalerState(ctx context.Context, fleet string) (ScalerState, error) {
	fk := s.Keys(fleet)
	var index, down *redis.ZSliceCmd
	// Every key shares the fleet's hash slot, so each pipeline reaches a
	// single node even in Redis Cluster.
	_, err := s.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		index = pl.ZRangeWithScores(ctx, fk.Scalers(), 0, -1)
		down = pl.ZRangeWithScores(ctx, fk.ScaleDown(), 0, -1)
		return nil
	})
	if err != nil {
		return ScalerState{}, fmt.Errorf("read scaler state of %s: %w", fleet, err)
	}
	var st ScalerState
	if st.Decisions, err = s.decisions(ctx, fleet, index.Val()); err != nil {
		return ScalerState{}, err
	}
	if zs := down.Val(); len(zs) > 0 {
		st.ScaleDown = make([]RankedPod, 0, len(zs))
		for _, z := range zs {
			pod, _ := z.Member.(string)
			st.ScaleDown = append(st.ScaleDown, RankedPod{Pod: pod, Priority: z.Score})
		}
	}
	return st, nil
}

// decisions reads the hashes of the indexed triggers, skipping those that
// expired, sorted by trigger.
func (s *Store) decisions(ctx context.Context, fleet string, index []redis.Z) ([]Decision, error) {
	if len(index) == 0 {
		return nil, nil
	}
	fk := s.Keys(fleet)
	ids := make([]string, 0, len(index))
	for _, z := range index {
		if id, ok := z.Member.(string); ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	_, err := s.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = pl.HGetAll(ctx, fk.Scaler(id))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read scaler decisions of %s: %w", fleet, err)
	}
	var out []Decision
	for i, c := range cmds {
		if h := c.Val(); len(h) > 0 {
			out = append(out, Decision{Trigger: ids[i], Fields: h})
		}
	}
	return out, nil
}

// SetScaleDown replaces fleet's scale-down order, for operators (wsgate
// metrics): pods[0] goes first. An empty list removes it.
func (s *Store) SetScaleDown(ctx context.Context, fleet string, pods []string) error {
	args := make([]any, len(pods))
	for i, pod := range pods {
		args[i] = pod
	}
	err := scriptScaleDown.Run(ctx, s.rdb, []string{s.Keys(fleet).ScaleDown()}, args...).Err()
	if err != nil {
		return fmt.Errorf("set scale-down order of %s: %w", fleet, err)
	}
	return nil
}

// ClearScaleDown removes fleet's scale-down order.
func (s *Store) ClearScaleDown(ctx context.Context, fleet string) error {
	if err := s.rdb.Del(ctx, s.Keys(fleet).ScaleDown()).Err(); err != nil {
		return fmt.Errorf("clear scale-down order of %s: %w", fleet, err)
	}
	return nil
}

// PodLoads reads the live connections per pod of fleet: placeable pods
// from avail, the others (not ready, draining, gone from the registry with
// connections left) from load (tracker/PROTOCOL.md; as Snapshot reads
// them). One round trip, O(pods), whatever the number of instances.
func (s *Store) PodLoads(ctx context.Context, fleet string) (map[string]int, error) {
	fk := s.Keys(fleet)
	pipe := s.rdb.Pipeline()
	load := pipe.ZRangeWithScores(ctx, fk.Load(), 0, -1)
	avail := pipe.ZRangeWithScores(ctx, fk.Avail(), 0, -1)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("pod loads %s: %w", fleet, err)
	}
	out := map[string]int{}
	for _, zs := range [][]redis.Z{load.Val(), avail.Val()} {
		for _, z := range zs {
			if pod, ok := z.Member.(string); ok {
				out[pod] = int(z.Score)
			}
		}
	}
	return out, nil
}

// Events is a subscription to a fleet's events channel (Keys.Events).
type Events struct {
	ps   *redis.PubSub
	c    chan string
	done chan struct{}
}

// SubscribeEvents subscribes to fleet's events channel and waits for Redis
// to confirm it, so that an event published after it returns is not
// missed. The error says the confirmation failed (Redis down): the
// subscription is returned all the same and reconnects by itself. Close it
// when done.
func (s *Store) SubscribeEvents(ctx context.Context, fleet string) (*Events, error) {
	ps := s.rdb.Subscribe(ctx, s.Keys(fleet).Events())
	_, err := ps.Receive(ctx)
	e := &Events{ps: ps, c: make(chan string), done: make(chan struct{})}
	in := ps.Channel()
	go func() {
		for m := range in {
			select {
			case e.c <- m.Payload:
			case <-e.done:
				return
			}
		}
	}()
	return e, err
}

// C delivers the payloads published to the channel: "active", or a
// rejection reason. Pub/sub is fire and forget: a message may be lost.
func (e *Events) C() <-chan string { return e.c }

// Close ends the subscription.
func (e *Events) Close() error {
	close(e.done)
	return e.ps.Close()
}
