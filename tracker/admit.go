package tracker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// errGateBusy: a heartbeat held the admission gate past the deadline.
var errGateBusy = errors.New("waiting for the heartbeat")

// errGaveUp: while an admission waited for the gate, the heartbeat that
// held it failed. Its script may still run, and would replace this
// instance's slots with a count that misses anything admitted after it, so
// nothing goes through Redis until a heartbeat succeeds (PROTOCOL.md,
// Entitlements).
var errGaveUp = errors.New("the heartbeat before it failed")

// Result is the outcome of one admission.
type Result struct {
	Fleet    string
	Admitted bool
	// Conn identifies the admitted connection in Establish, Renew, Release.
	Conn string
	// fleets.Pod is the "ip:port" the connection must go to.
	Pod        string
	Reason     store.Reason
	RetryAfter time.Duration
	// Fallback is true when the decision was made without Redis.
	Fallback bool
	// Reused is true when the connection took a slot that one of this
	// instance's connections had freed and whose release was still queued
	// (PROTOCOL.md, "Reuse"): Redis counted it for this instance all along.
	Reused bool
}

// Admit decides one new connection of fleet: the local token bucket first,
// then one Redis script (for a fleet with shards, one per group it tries,
// see admitShards); while Redis is unreachable, the fallback.
func (t *Tracker) Admit(ctx context.Context, fleetName string) (Result, error) {
	start := time.Now()
	fam, err := t.family(fleetName)
	if err == nil && fam.retired.Load() {
		err = fmt.Errorf("fleet %q: removed from the configuration: %w", fleetName, ErrUnknownFleet)
	}
	if err != nil {
		return Result{}, fmt.Errorf("admit: %w", err)
	}
	if t.draining.Load() {
		return Result{Fleet: fam.name, Reason: ReasonDraining, RetryAfter: time.Second}, nil
	}
	res, err := t.admit(ctx, fam)
	if err != nil {
		return res, err
	}
	t.metrics.AdmitSeconds.Observe(time.Since(start).Seconds())
	if res.Reused {
		t.metrics.Reused.WithLabelValues(fam.name).Inc()
	}
	if res.Admitted {
		fam.admitted.Inc()
	} else {
		fam.rejected[res.Reason].Inc()
	}
	return res, nil
}

func (t *Tracker) admit(ctx context.Context, fam *family) (Result, error) {
	now := t.now()
	if r := fam.limiter.ReserveN(now, 1); r.DelayFrom(now) > 0 {
		d := r.DelayFrom(now)
		r.CancelAt(now)
		// The rate limit is the fleet's: its refusals go to group 0's ring.
		fam.groups[0].reject(store.ReasonRateLimit, now)
		return Result{Fleet: fam.name, Reason: store.ReasonRateLimit, RetryAfter: ceilSecond(d)}, nil
	}
	if len(fam.groups) > 1 {
		return t.admitShards(ctx, fam, now)
	}
	f := fam.groups[0]
	if res, ok := t.reuse(f, now); ok {
		return res, nil
	}
	return t.admitGroup(ctx, f, now, true)
}

// admitGroup decides an admission in group f through Redis or, when Redis
// is not usable for it, its fallback. record: a refusal of the fallback
// goes to the rejection rings (the caller records it otherwise).
func (t *Tracker) admitGroup(ctx context.Context, f *fleet, now time.Time, record bool) (Result, error) {
	why := "degraded"
	if !f.fam.layoutUsable() {
		why = "layout"
	}
	if f.redisUsable() {
		res, fence, err := t.admitRedis(ctx, f, now)
		switch {
		case err == nil && fence == "":
			return res, nil
		case ctx.Err() != nil:
			// The caller left; whatever the script did, the next heartbeat
			// publishes the truth again.
			return Result{}, fmt.Errorf("admit %s: %w", f.name, ctx.Err())
		case errors.Is(err, errGateBusy):
			// A heartbeat held the gate past this admission's deadline: no
			// Redis failure, only this admission leaves Redis.
			why = "gate_busy"
		case errors.Is(err, errQueued):
			// Calls in flight held it past its deadline: Redis is slow, not
			// failing; only this admission leaves Redis.
			why = "queued"
		case errors.Is(err, errGaveUp):
		case errors.Is(err, store.ErrNotReplicated):
			// Redis ran the call but its replicas did not acknowledge it
			// (--redis-wait-replicas): a lost reply, as below; its own why,
			// because heartbeats still succeed meanwhile and end the
			// fallback each time, so only this says that it lasts.
			why = "not_replicated"
			t.degrade(f, "admit", err)
		case err != nil:
			// The script may have run: Redis then counts a slot this
			// instance does not, which is safe and the next heartbeat fixes.
			why = "redis_error"
			t.degrade(f, "admit", err)
		default:
			why = string(fence)
			t.fence(f, fence)
		}
	}
	t.metrics.Fallbacks.WithLabelValues(f.label, why).Inc()
	return t.admitFallback(f, now, why, record), nil
}

// fallbackWhys are the values of fallback_decisions_total's why label.
// layout: the layout guard keeps the fleet out of Redis (PROTOCOL.md,
// "Shards"), and the fallback refuses.
var fallbackWhys = []string{"redis_error", "not_replicated", "gate_busy", "queued", "degraded", "layout", string(store.FenceEpoch), string(store.FenceRecovering), string(store.FenceLease)}

// refusalLocked is the reason a fallback gives when it has no slot
// either, for an admission that left Redis for why: recovering when Redis
// answered and the fleet is in (or, fenced by a newer epoch, about to
// join) a recovery wait; redis_down otherwise. Only the reason differs:
// what is admitted is the fallback's decision alone.
func (f *fleet) refusalLocked(why string) store.Reason {
	switch {
	case why == string(store.FenceRecovering), why == string(store.FenceEpoch):
		return store.ReasonRecovering
	case why == "degraded" && f.fenced && f.fencedBy == store.FenceEpoch && !f.degraded:
		return store.ReasonRecovering
	}
	return store.ReasonRedisDown
}

// reuse admits into a slot of this instance whose release is still queued
// (PROTOCOL.md, "Reuse"): Redis counts the slot for this instance, so
// taking it back needs no call, and the release is then not sent. Only
// while Redis is usable and this instance's lease runs (the share
// fallback's rule), and only on a pod the policy would also pick as far as
// the last heartbeat saw the fleet: placeable, not above the cap, and
// among the emptiest (spread) or the fullest under the cap (pack), so that
// reuse does not keep connections off a pod that just came up, nor on one
// that could empty.
func (t *Tracker) reuse(f *fleet, now time.Time) (Result, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pod := f.spareSlotLocked(now, nil)
	if pod == "" {
		return Result{}, false
	}
	f.takeSpareLocked(pod)
	return t.recordReusedLocked(f, pod, now), true
}

func (t *Tracker) recordReusedLocked(f *fleet, pod string, now time.Time) Result {
	res := t.recordLocked(f, pod, now, false)
	res.Reused = true
	return res
}

// spareSlotLocked picks the pod of a spare slot that reuse may take back
// now (see reuse), "" when there is none; taken counts slots already
// taken back and not yet recorded (held).
func (f *fleet) spareSlotLocked(now time.Time, taken map[string]int) string {
	if len(f.spare) == 0 || !f.redisUsableLocked() || !now.Before(f.localLeaseUntil) || f.noReuse {
		return ""
	}
	fc := f.conf()
	best, bestLoad := "", 0
	for pod, n := range f.spare {
		load, placeable := f.view.load[pod]
		if n <= 0 || f.ent[pod] <= f.heldLocked(pod)+taken[pod] || !placeable || !f.view.fits(pod, fc) {
			continue
		}
		if ranksBefore(fc.Policy, pod, load, best, bestLoad) {
			best, bestLoad = pod, load
		}
	}
	return best
}

// ranksBefore says whether pod, at load, comes before best (at bestLoad;
// "" for none yet) in policy's order: the fullest first under pack, the
// emptiest under spread, then by name.
func ranksBefore(policy fleets.Policy, pod string, load int, best string, bestLoad int) bool {
	switch {
	case best == "" || (load == bestLoad && pod < best):
		return true
	case policy == fleets.PolicyPack:
		return load > bestLoad
	default:
		return load < bestLoad
	}
}

// admitRedis runs the admit script. A fence is Redis' refusal to decide.
func (t *Tracker) admitRedis(ctx context.Context, f *fleet, now time.Time) (Result, store.Fence, error) {
	deadline := time.Now().Add(t.cfg.RedisTimeout)
	if err := acquire(ctx, f.gate, deadline); err != nil {
		return Result{}, "", fmt.Errorf("admit %s: %w (%v)", f.name, errGateBusy, err)
	}
	defer f.gate.Release(1)
	if !f.redisUsable() { // the heartbeat it waited for failed
		return Result{}, "", fmt.Errorf("admit %s: %w", f.name, errGaveUp)
	}
	a, err := f.admits.do(ctx, struct{}{}, deadline)
	if err != nil && !errors.Is(err, errUnsent) {
		// Its call may have run, or run later: Redis may count a slot
		// here that this instance does not, which a delta heartbeat
		// would leave there (PROTOCOL.md, "Delta heartbeats"). One never
		// sent (it waited in the queue past its deadline, or its caller
		// left first) changed nothing.
		f.restate()
	}
	if err != nil || a.Fence != "" {
		return Result{}, a.Fence, err
	}
	if a.Pod == "" {
		return Result{Fleet: f.label, Reason: a.Reason, RetryAfter: time.Duration(f.conf().RetryAfter)}, "", nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if a.reused {
		// The sender took the slot out of spare for this admission; it is
		// still in ent - held unless the share fallback took it meanwhile.
		// And the lease may have ended meanwhile (a 'lease' refusal of
		// the batch's other admissions): a reaped instance reuses nothing.
		if f.ent[a.Pod] <= f.heldLocked(a.Pod) || !now.Before(f.localLeaseUntil) {
			return Result{}, "", fmt.Errorf("admit %s: reused slot on %s taken or lease over meanwhile: %w", f.name, a.Pod, errGaveUp)
		}
		return t.recordReusedLocked(f, a.Pod, now), "", nil
	}
	f.ent[a.Pod]++ // granted: Redis counts it for this instance
	return t.recordLocked(f, a.Pod, now, false), "", nil
}

// acquire takes one unit of gate, waiting until deadline at most. A free
// gate, the common case, costs no timer.
func acquire(ctx context.Context, gate *semaphore.Weighted, deadline time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if gate.TryAcquire(1) {
		return nil
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	return gate.Acquire(ctx, 1)
}

// admission is what a batch's call gave one admission: Redis' decision,
// or a slot of this instance's taken back (reused) when the batch was
// about to be sent.
type admission struct {
	store.Admission
	reused bool
}

// sendAdmits makes one admit call for n admissions. Each of them holds its
// unit of the gate while queued and sent, so no heartbeat (which takes the
// whole gate, and alone changes the epoch) runs between their checks that
// Redis is usable and this call: the epoch is the one they saw.
func (t *Tracker) sendAdmits(f *fleet) func(context.Context, []struct{}) ([]admission, error) {
	return func(ctx context.Context, n []struct{}) ([]admission, error) {
		fc := f.conf()
		// The releases queued meanwhile ride along, applied first. Where
		// a spare slot suits an admission of the batch, the admission takes
		// it back instead, and neither goes to Redis (reuse). A spare
		// release stays queued for its linger: this call would give Redis
		// a slot the next admission might take back.
		rel := f.releases.take(func(r releaseReq) bool { return r.spare })
		now := t.now()
		f.mu.Lock()
		epoch, seq := f.epoch, f.seq
		var reused []string
		var taken map[string]int // pod -> slots taken here, recorded later
		for len(reused) < len(n) {
			pod := f.spareSlotLocked(now, taken)
			if pod == "" {
				break
			}
			f.takeSpareLocked(pod)
			if taken == nil {
				taken = map[string]int{}
			}
			taken[pod]++
			reused = append(reused, pod)
		}
		counts, lowered := f.releaseCountsLocked(rel, seq)
		// One admission alone goes with a guess of the pick (hint.go); a
		// batch is already sharing its call.
		var hint store.Hint
		gen := f.view.gen
		if len(n)-len(reused) == 1 {
			hint, _ = f.view.hint.take(&f.view, fc)
		}
		f.mu.Unlock()
		res := make([]admission, len(n))
		for i, pod := range reused {
			res[i] = admission{Admission: store.Admission{Pod: pod}, reused: true}
		}
		var a store.AdmitReply
		var err error
		switch {
		case len(reused) < len(n):
			a, err = t.store.Admit(ctx, store.AdmitRequest{Fleet: f.name, MaxPerPod: fc.MaxConnectionsPerPod, Policy: fc.Policy, Instance: t.cfg.InstanceID, Epoch: epoch, Now: now, N: len(n) - len(reused), Seq: seq, Releases: counts, Hint: hint})
			if hint.Pod != "" && err == nil && a.Fence == "" {
				f.hinted(gen, hint, a)
			}
		case len(counts) > 0: // every admission reused: the releases go alone
			_, err = t.store.Release(ctx, store.ReleaseRequest{Fleet: f.name, Instance: t.cfg.InstanceID, Epoch: epoch, Seq: seq, Releases: counts})
		}
		if len(counts) > 0 {
			t.released(f, counts, lowered, seq, err)
		}
		if rel != nil {
			f.releases.finish()
		}
		if len(reused) == len(n) {
			return res, nil // decided here, whatever the releases' call did
		}
		if errors.Is(err, store.ErrEpochFenced) {
			err = nil // the admissions' own answer is a.Fence
		}
		if err != nil {
			// The reused ones did not need Redis; the call's failure is
			// theirs too all the same: their slots stay in ent - held.
			return nil, err
		}
		for i := range res[len(reused):] {
			r := &res[len(reused)+i].Admission
			switch {
			case a.Fence != "":
				*r = store.Admission{Fence: a.Fence, Wait: a.Wait}
			case i < len(a.Pods):
				*r = store.Admission{Pod: a.Pods[i]}
			default:
				*r = store.Admission{Reason: a.Reason}
			}
		}
		return res, nil
	}
}

// hinted learns from the answer a to an admit call that carried hint, a
// guess of the view gen (hint.go), and counts it.
func (f *fleet) hinted(gen uint64, hint store.Hint, a store.AdmitReply) {
	if a.HintTaken {
		f.fam.hintsTaken.Inc()
	} else {
		f.fam.hintsRefused.Inc()
	}
	granted := ""
	if len(a.Pods) > 0 {
		granted = a.Pods[0]
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hintResultLocked(gen, hint, a.HintTaken, granted)
}

// hintResultLocked gives the view the answer to its guess, unless a
// heartbeat replaced the view since the guess (its gate is open once the
// heartbeat's call is over, before the view is replaced; and a caller that
// gave up on a call in flight returns its unit of the gate early).
func (f *fleet) hintResultLocked(gen uint64, hint store.Hint, taken bool, granted string) {
	if f.view.gen == gen {
		f.view.hint.result(hint, taken, granted)
	}
}

// admitFallback decides an admission Redis did not.
//
// share: only into a slot Redis already counts for this instance and that
// it does not use (ent - held: connections that ended while Redis could not
// be told), and only while its lease holds. Nobody else can hold such a
// slot, so the cap holds whatever the others do (PROTOCOL.md).
//
// open: against the last heartbeat's counts, as if the other instances
// admitted nothing since. May exceed the cap.
//
// With no slot it refuses, with the reason refusalLocked gives for why
// (the admission left Redis for it): redis_down, or recovering.
func (t *Tracker) admitFallback(f *fleet, now time.Time, why string, record bool) Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	best, bestLoad := "", 0
	policy := f.conf().Policy
	better := func(pod string, load int) bool { return ranksBefore(policy, pod, load, best, bestLoad) }
	mode := t.cfg.Fallback
	if !f.fam.layoutUsable() {
		// Closed, whatever --fallback says: ent and the view count pods in
		// the group this instance's shards put them in, which the recorded
		// layout may not (PROTOCOL.md, "Shards").
		mode = FallbackClosed
	}
	switch mode {
	case FallbackShare:
		if !now.Before(f.localLeaseUntil) {
			break
		}
		for pod, n := range f.ent {
			if held := f.heldLocked(pod); held < n && better(pod, held) {
				best, bestLoad = pod, held
			}
		}
	case FallbackOpen:
		if !f.view.ok {
			break
		}
		for _, pod := range f.view.pods {
			load := f.view.load[pod] - f.view.mine[pod] + f.heldLocked(pod)
			if load < f.conf().MaxConnectionsPerPod && better(pod, load) {
				best, bestLoad = pod, load
			}
		}
	}
	if best == "" {
		refused := f.refusalLocked(why)
		if record {
			f.rejectLocked(refused, now)
		}
		return Result{Fleet: f.label, Reason: refused, RetryAfter: time.Second, Fallback: true}
	}
	return t.recordLocked(f, best, now, true)
}
