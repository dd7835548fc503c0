package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is the Go side of the instances' lifecycle: the heartbeat
// (sync.lua), a new run of an instance (Resume), the recovery wait
// (recovery.lua), leaving (leave.lua) and reaping (reap.lua).

// PodCount is one pod's count in a sync: live connections (admitted and not
// yet released) and how many of them Envoy reported established.
type PodCount struct {
	Pod         string
	Live        int
	Established int
}

// RejectionCount is a number of rejections in one bucket, buffered by a
// tracker (rate_limit, redis_down and recovering never reach Redis on their own).
type RejectionCount struct {
	Reason Reason
	Bucket int64
	Count  int64
}

// SyncRequest is one instance's heartbeat for one fleet.
type SyncRequest struct {
	Fleet    string
	Instance string
	// Lease is how long the instance stays alive in Redis (Redis' clock).
	Lease time.Duration
	// RecoveryWait is how long a new epoch grants nothing: the instance TTL.
	RecoveryWait time.Duration
	// Seq orders the instance's heartbeats and releases (see sync.lua).
	Seq uint64
	// Confirm names the epoch whose recovery wait this instance saw pass
	// on its own clock (see sync.lua); empty for none.
	Confirm string
	// WaitReplicas is how many replicas acknowledge each of this
	// instance's admissions before it counts (0: none). When every
	// instance's heartbeats say some do, a promoted replica's new epoch
	// ends its recovery wait as soon as every instance it received has
	// heartbeated in it (sync.lua; PROTOCOL.md, "Ending the wait early
	// after a failover").
	WaitReplicas int
	// Base makes this a delta heartbeat (PROTOCOL.md, "Delta
	// heartbeats"): Counts then holds only the pods whose counts moved
	// since the heartbeat Base names (a pod it holds none on any more
	// with 0 and 0), and Redis applies it only if that heartbeat is still
	// the instance's last one in its epoch; otherwise nothing is done
	// and the result says NeedFull. Nil: a full heartbeat, Counts is all
	// the instance holds.
	Base   *SyncBase
	Counts []PodCount
	// Live is the instance's live connections in the fleet, all pods:
	// what Redis counts for it once the heartbeat applies, published for
	// the scaler (Summary.Live sums it over the instances Redis counts). A delta
	// must give it (its Counts are only some pods); for a full heartbeat
	// it is the sum of Counts' Live, which 0 stands for.
	Live       int
	Rejections []RejectionCount
	// Reap names instances whose seq the caller saw stand still for a lease.
	Reap []string
	// WatchInstances asks for every instance's seq (SyncResult.Instances),
	// for the caller's reaper watch (Stalled.Due says when).
	WatchInstances bool
}

// SyncBase names an instance's acknowledged heartbeat: the epoch it ran
// in and its seq.
type SyncBase struct {
	Epoch string
	Seq   uint64
}

// SyncResult is what the instance learns from a heartbeat: the epoch, the
// live instances and the placeable pods with their load.
type SyncResult struct {
	Epoch        string
	EpochCreated bool
	// Recovering is how long the epoch still grants nothing.
	Recovering time.Duration
	// Instances are the instances Redis holds (this one included), each
	// with its seq, which moves with each of its heartbeats: a reaper
	// watches it (see Stalled). nil unless the request's WatchInstances.
	Instances map[string]uint64
	// Avail is each placeable pod's live connections, all instances.
	Avail  map[string]int
	Reaped []string
	// Stale: a later heartbeat or release of this instance already ran;
	// nothing done. Seq is the instance's last seq in Redis.
	Stale bool
	Seq   uint64
	// NeedFull: a delta heartbeat whose base Redis no longer holds (the
	// instance was reaped or left, a new epoch began, or a heartbeat of
	// it ran whose reply was not read); nothing was done but, perhaps,
	// a new epoch. Send a full one.
	NeedFull bool
}

// syncKeys are sync.lua's KEYS, in its order.
func syncKeys(k Keys, instance string) []string {
	return []string{k.Load(), k.Avail(), k.Inst(instance), k.Pend(instance), k.Instances(), k.Epoch(), k.Seq()}
}

// Sync replaces the instance's counts with req.Counts and flushes its
// buffered rejections (see sync.lua).
func (s *Store) Sync(ctx context.Context, req SyncRequest) (SyncResult, error) {
	fk := s.Keys(req.Fleet)
	keys := s.hot(req.Fleet, req.Instance).sync
	// ARGV, in sync.lua's order: id, lease_ms, new_epoch, prefix, slots,
	// channel, run_check, seq, recovery_ms, confirm, wait_replicas, kind,
	// base seq, base epoch, the instance's total, then the counted lists:
	// npods and (pod, live, established) each, nrej and (reason, bucket,
	// count) each, nreap and the ids.
	kind, baseSeq, baseEpoch := "full", "", ""
	total := req.Live
	if req.Base != nil {
		kind, baseSeq, baseEpoch = "delta", strconv.FormatUint(req.Base.Seq, 10), req.Base.Epoch
	} else {
		sum := 0
		for _, c := range req.Counts {
			sum += c.Live
		}
		if total != 0 && total != sum {
			return SyncResult{}, fmt.Errorf("sync %s: SyncRequest.Live %d is not the sum %d of a full heartbeat's Counts", req.Fleet, total, sum)
		}
		total = sum
	}
	if total < 0 {
		return SyncResult{}, fmt.Errorf("sync %s: SyncRequest.Live %d is negative", req.Fleet, total)
	}
	args := []any{req.Instance, req.Lease.Milliseconds(), newEpoch(), fk.Prefix(),
		BucketSlots, fk.Events(), s.runCheck, req.Seq, req.RecoveryWait.Milliseconds(), req.Confirm,
		req.WaitReplicas, kind, baseSeq, baseEpoch, total, len(req.Counts)}
	for _, c := range req.Counts {
		args = append(args, c.Pod, c.Live, c.Established)
	}
	args = append(args, len(req.Rejections))
	for _, r := range req.Rejections {
		args = append(args, string(r.Reason), r.Bucket, r.Count)
	}
	args = append(args, len(req.Reap))
	for _, id := range req.Reap {
		args = append(args, id)
	}
	// What the heartbeat reads of the fleet is pipelined after the script,
	// on the same connection to the node of the fleet's slot, rather than
	// returned by it (sync.lua): the placeable pods' counts by a plain
	// ZRANGE, which costs Redis about half of returning them from Lua, and
	// the instances' seqs only when asked. The reads are not atomic with the
	// script: they are views for the tracker's choices (reuse, the open
	// fallback, a sharded fleet's choice of a group) and its reaper watch,
	// which were a heartbeat old anyway, never for the cap.
	//
	// run queues the heartbeat on c: by hash, or (eval) with the scripts'
	// text, which loads them where Redis lacks them, as redis.Script.Run
	// does: a user without SCRIPT LOAD (README, "Operations") may still
	// EVAL.
	ikeys := []string{fk.Instances(), fk.Seq()}
	run := func(c redis.Pipeliner, eval bool) (script *redis.Cmd, avail *redis.ZSliceCmd, inst *redis.Cmd) {
		call := func(sc *redis.Script, keys []string, args ...any) *redis.Cmd {
			if eval {
				return sc.Eval(ctx, c, keys, args...)
			}
			return sc.EvalSha(ctx, c, keys, args...)
		}
		script = call(scriptSync, keys, args...)
		avail = c.ZRangeWithScores(ctx, fk.Avail(), 0, -1)
		if req.WatchInstances {
			inst = call(scriptInstances, ikeys)
		}
		return script, avail, inst
	}
	pipe := s.rdb.Pipeline()
	script, avail, inst := run(pipe, false)
	_, _ = pipe.Exec(ctx)
	if noScript(script.Err()) {
		// A restarted, failed-over or flushed Redis: the heartbeat did not
		// run; again, with the texts.
		pipe = s.rdb.Pipeline()
		script, avail, inst = run(pipe, true)
		_, _ = pipe.Exec(ctx)
	}
	if inst != nil && noScript(inst.Err()) {
		// Only the read was missing: the heartbeat ran, and runs once.
		inst = scriptInstances.Run(ctx, s.rdb, ikeys)
	}
	res, err := script.Slice()
	if err != nil {
		return SyncResult{}, fmt.Errorf("sync %s: %w", req.Fleet, err)
	}
	out, err := decodeSync(req.Fleet, res)
	if err != nil || out.NeedFull || out.Stale {
		return out, err // a stale or refused call did nothing and learns nothing
	}
	zs, err := avail.Result()
	if err != nil {
		return SyncResult{}, fmt.Errorf("sync %s: the placeable pods: %w", req.Fleet, err)
	}
	out.Avail = make(map[string]int, len(zs))
	for _, z := range zs {
		out.Avail[z.Member.(string)] = int(z.Score)
	}
	if inst != nil {
		l, err := inst.StringSlice()
		if err != nil {
			return SyncResult{}, fmt.Errorf("sync %s: the instances: %w", req.Fleet, err)
		}
		out.Instances = instanceSeqs(l)
	}
	return out, nil
}

// syncNeedFull is sync.lua's stale slot for a delta whose base Redis no
// longer holds.
const syncNeedFull = 2

// sync.lua's reply, by position.
const (
	syncEpoch      = iota // the epoch's id
	syncCreated           // 1 when this call created it
	syncRecovering        // ms until its recovery wait ends
	syncReaped            // the ids reaped
	syncStale             // 1: a later call of the instance already ran
	syncSeq               // the instance's last seq
	syncReplyLen
)

func decodeSync(fleet string, res []any) (SyncResult, error) {
	if len(res) != syncReplyLen {
		return SyncResult{}, fmt.Errorf("sync %s: unexpected reply of %d elements", fleet, len(res))
	}
	out := SyncResult{Avail: map[string]int{}}
	out.Epoch, _ = res[syncEpoch].(string)
	out.EpochCreated = i64(res[syncCreated]) == 1
	out.Recovering = time.Duration(i64(res[syncRecovering])) * time.Millisecond
	out.Reaped = strs(res[syncReaped])
	out.Stale = i64(res[syncStale]) == 1
	out.NeedFull = i64(res[syncStale]) == syncNeedFull
	out.Seq, _ = strconv.ParseUint(fmt.Sprint(res[syncSeq]), 10, 64)
	return out, nil
}

// Resume reads what Redis holds for instance (pod -> connections: what a
// previous run of it left) and starts a new run of it: the first seq of the
// run is above every seq an earlier run can have sent, even one still
// waiting in Redis' input buffer (a generation counter in the high bits).
func (s *Store) Resume(ctx context.Context, fleet, instance string) (map[string]int, uint64, error) {
	fk := s.Keys(fleet)
	m, err := s.rdb.HGetAll(ctx, fk.Inst(instance)).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("resume %s %s: %w", fleet, instance, err)
	}
	gen, err := s.rdb.HIncrBy(ctx, fk.Gen(), instance, 1).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("resume %s %s: %w", fleet, instance, err)
	}
	out := make(map[string]int, len(m))
	for pod, v := range m {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			out[pod] = n
		}
	}
	return out, uint64(gen) << seqGenShift, nil
}

// seqGenShift leaves 2^32 calls to a run and 2^21 runs to an instance id
// within Lua's exact integers (2^53).
const seqGenShift = 32

// Recovery is how long fleet's epoch still grants nothing (see
// FenceRecovering), by Redis' clock: 0 once it grants. It is at least a
// millisecond while there is no epoch, while the epoch was made by another
// Redis process (a restart: the next heartbeat opens a new one), and while
// no tracker has confirmed the wait on its own clock.
func (s *Store) Recovery(ctx context.Context, fleet string) (time.Duration, error) {
	// KEYS: epoch; ARGV: run_check. The reply: the wait in ms.
	ms, err := scriptRecovery.Run(ctx, s.rdb, []string{s.Keys(fleet).Epoch()}, s.runCheck).Int64()
	if err != nil {
		return 0, fmt.Errorf("recovery %s: %w", fleet, err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// AwaitRecovery returns once fleet's epoch grants (Recovery is 0), or with
// ctx's error. Trackers must heartbeat meanwhile: one of them confirms the
// wait. Redis' clock gives no event to wait for: it polls.
func (s *Store) AwaitRecovery(ctx context.Context, fleet string) error {
	for {
		left, err := s.Recovery(ctx, fleet)
		if err != nil || left == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("recovery %s: %w", fleet, ctx.Err())
		case <-time.After(min(left, 50*time.Millisecond)):
		}
	}
}

// Instances reads the instances of fleet and their seq, for a reaper's
// watch (see Stalled): those Redis holds, not every seq it keeps (a left
// instance's stays, to fence its late calls).
func (s *Store) Instances(ctx context.Context, fleet string) (map[string]uint64, error) {
	fk := s.Keys(fleet)
	l, err := scriptInstances.Run(ctx, s.rdb, []string{fk.Instances(), fk.Seq()}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("instances %s: %w", fleet, err)
	}
	return instanceSeqs(l), nil
}

// instanceSeqs decodes instances.lua's (id, seq, ...).
func instanceSeqs(l []string) map[string]uint64 {
	out := make(map[string]uint64, len(l)/2)
	for i := 0; i+1 < len(l); i += 2 {
		out[l[i]], _ = strconv.ParseUint(l[i+1], 10, 64)
	}
	return out
}

// Reap removes the instances of fleet among ids (ones the caller saw stand
// still for a lease) whose lease has also ended by Redis' clock, and
// returns those it removed.
func (s *Store) Reap(ctx context.Context, fleet string, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	fk := s.Keys(fleet)
	// KEYS: instances; ARGV: prefix, then the ids. The reply: the ids reaped.
	args := []any{fk.Prefix()}
	for _, id := range ids {
		args = append(args, id)
	}
	res, err := scriptReap.Run(ctx, s.rdb, []string{fk.Instances()}, args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("reap %s: %w", fleet, err)
	}
	return strs(res), nil
}

// LeaveRequest is an instance leaving its fleet at once (leave.lua). Seq
// is above every call the instance made before: a late one is then
// ignored.
type LeaveRequest struct {
	Fleet    string
	Instance string
	Seq      uint64
}

// Leave removes the request's instance from its fleet at once, with
// whatever Redis counts for it: only for an instance whose Envoy carries
// none of those connections any more (it drained, or Envoy is gone). It
// reports whether the instance was there.
func (s *Store) Leave(ctx context.Context, req LeaveRequest) (bool, error) {
	fk := s.Keys(req.Fleet)
	// KEYS: instances; ARGV: prefix, id, seq. The reply: 1 if it was there.
	n, err := scriptLeave.Run(ctx, s.rdb, []string{fk.Instances()}, fk.Prefix(), req.Instance, req.Seq).Int()
	if err != nil {
		return false, fmt.Errorf("leave %s: %w", req.Fleet, err)
	}
	return n == 1, nil
}
