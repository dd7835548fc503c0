package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wsgate/wsgate/fleets"
)

// This file is the Go side of admit.lua and release.lua, the scripts every
// admission and release runs (the hot path: see hotKeys and runHot).

// Admission is what the admit script decided for one connection.
type Admission struct {
	Pod    string // set when admitted
	Reason Reason // set when Redis rejected it
	Fence  Fence  // set when Redis could not decide
	// Wait is how long a FenceRecovering lasts.
	Wait time.Duration
}

// Admissions is what the admit script decided for n connections: the pods
// granted (a pod once per connection), and Reason for the others.
type Admissions struct {
	Pods   []string
	Reason Reason // why the ones beyond Pods were refused
	Fence  Fence  // set when Redis could not decide: none was admitted
	Wait   time.Duration
}

// ReleaseCount gives back N connections of one pod, Pending of which were
// never established.
type ReleaseCount struct {
	Pod        string
	N, Pending int
}

// AdmitRequest is one call of the admit script: N connections of Instance
// to place on pods of Fleet under MaxPerPod, as slots entitled to Instance,
// if Instance's Epoch and lease are current. Releases, when there are any,
// are given back first, as Release would with Seq, with nothing between.
type AdmitRequest struct {
	Fleet     string
	MaxPerPod int
	Policy    fleets.Policy
	Instance  string
	Epoch     string
	// Now is the caller's clock: it picks the rejection bucket.
	Now time.Time
	// N is how many connections to place: the state afterwards is what N
	// admissions in a row would leave.
	N        int
	Seq      uint64
	Releases []ReleaseCount
	// Hint, when its Pod is set and N is 1, is the pod the caller expects
	// the script's pick to choose: the script grants on it without the
	// pick when it is placeable, under MaxPerPod, and its count before the
	// admission is within [Hint.Min, Hint.Max]; otherwise (and for N > 1,
	// which the pick spreads as N admissions in a row) it picks as without
	// a hint (PROTOCOL.md, "Hinted admission").
	Hint Hint
}

// Hint is a caller's guess of the admit script's pick, and the counts (before
// the admission) at which its policy still allows the pod, as far as the
// caller's view of the fleet goes.
type Hint struct {
	Pod      string
	Min, Max int
}

// AdmitReply is what the admit script decided, and how many of the
// request's Releases the instance held (and gave back).
type AdmitReply struct {
	Admissions
	Released int
	// HintTaken says that the admission went to the request's Hint without
	// the pick (the pick may choose the same pod when it refused the hint).
	HintTaken bool
}

// admitKeys are admit.lua's KEYS, in its order.
func admitKeys(k Keys, instance string) []string {
	return []string{k.Load(), k.Avail(), k.Inst(instance), k.Rej(ReasonCapacity), k.Rej(ReasonNoPods),
		k.RejInst(instance), k.Epoch(), k.Pend(instance)}
}

// Admit runs the admit script for req. With Releases, it returns
// ErrEpochFenced when the epoch refused them (the reply's Fence is then
// FenceEpoch).
func (s *Store) Admit(ctx context.Context, req AdmitRequest) (AdmitReply, error) {
	hot := s.hot(req.Fleet, req.Instance)
	args := append(make([]any, 0, len(hot.admit)+13+3*len(req.Releases)), hot.admit...)
	// ARGV, in admit.lua's order: cap, policy, bucket, slots, channel,
	// epoch, run_check, id, want, release_seq ('' for no releases), hint
	// ('' for none), its lowest and highest count, then (pod, n, pending)
	// per release. Only the request's own values are boxed.
	args = append(args, req.MaxPerPod, policyArg(req.Policy), Bucket(req.Now), BucketSlots, hot.channel, req.Epoch, hot.run, hot.instance, req.N)
	if len(req.Releases) == 0 {
		args = append(args, "")
	} else {
		args = append(args, req.Seq)
	}
	args = append(args, req.Hint.Pod, req.Hint.Min, req.Hint.Max)
	for _, r := range req.Releases {
		args = append(args, r.Pod, r.N, r.Pending)
	}
	if s.waitReplicas > 0 {
		return s.admitWait(ctx, req, hot, args)
	}
	res, err := s.runHot(ctx, hot, scriptAdmit, args).Slice()
	if err != nil {
		return AdmitReply{}, fmt.Errorf("admit %s: %w", req.Fleet, err)
	}
	return decodeAdmit(req, res)
}

// admitWait is Admit's call with WAIT (WithWait): one WAIT for the whole
// call, however many admissions it carries. A reply is used only when the
// replicas acknowledged it, refusals too, as the model's admit_read (a
// refusal could be used, it only lowers what the tracker relies on, but
// the model reads no reply that was not acknowledged); otherwise
// ErrNotReplicated, and the tracker takes the call as one whose reply was
// lost (admit_lost). The decoded reply comes with the error, for tests.
func (s *Store) admitWait(ctx context.Context, req AdmitRequest, hot *hotKeys, args []any) (AdmitReply, error) {
	cmd, wait := s.runHotWait(ctx, hot, scriptAdmit, args)
	res, err := cmd.Slice()
	if err != nil {
		return AdmitReply{}, fmt.Errorf("admit %s: %w", req.Fleet, err)
	}
	a, err := decodeAdmit(req, res)
	if err != nil && !errors.Is(err, ErrEpochFenced) {
		return a, err
	}
	if werr := s.acked(req.Fleet, wait); werr != nil {
		return a, werr
	}
	return a, err
}

// admit.lua's reply, by position: {granted, reason, released, hinted, then
// pod, n pairs}; or, when Redis must not decide, {-1, fence, wait ms,
// released}.
const (
	admitGranted  = 0 // connections granted; -1: Redis did not decide
	admitReason   = 1 // why the others were refused ('' when none was); or the fence
	admitReleased = 2 // connections released; or the fence's wait (ms)
	admitHinted   = 3 // 1 when the hint was taken
	admitPods     = 4 // the first pod granted, then how many on it, and so on
	// admitFencedReleased is, when fenced, the connections released: -1
	// when the epoch refused them too.
	admitFencedReleased = 3
)

func decodeAdmit(req AdmitRequest, res []any) (AdmitReply, error) {
	if len(res) < admitPods {
		return AdmitReply{}, fmt.Errorf("admit %s: unexpected reply %v", req.Fleet, res)
	}
	v, _ := res[admitReason].(string)
	granted, _ := res[admitGranted].(int64)
	if granted < 0 {
		a := Admissions{Fence: Fence(v), Wait: time.Duration(i64(res[admitReleased])) * time.Millisecond}
		released := 0
		if len(res) > admitFencedReleased {
			released = int(i64(res[admitFencedReleased]))
		}
		if released < 0 && len(req.Releases) > 0 {
			return AdmitReply{Admissions: a}, fmt.Errorf("release %s: %w", req.Fleet, ErrEpochFenced)
		}
		return AdmitReply{Admissions: a, Released: max(released, 0)}, nil
	}
	a := Admissions{Reason: Reason(v), Pods: make([]string, 0, granted)}
	for i := admitPods; i+1 < len(res); i += 2 {
		pod, _ := res[i].(string)
		for range i64(res[i+1]) {
			a.Pods = append(a.Pods, pod)
		}
	}
	if int64(len(a.Pods)) != granted || len(a.Pods) > req.N {
		return AdmitReply{}, fmt.Errorf("admit %s: unexpected reply %v", req.Fleet, res)
	}
	return AdmitReply{Admissions: a, Released: int(i64(res[admitReleased])), HintTaken: i64(res[admitHinted]) == 1}, nil
}

// AdmitOne is Admit for one connection (req.N is ignored).
func (s *Store) AdmitOne(ctx context.Context, req AdmitRequest) (Admission, error) {
	req.N = 1
	a, err := s.Admit(ctx, req)
	if len(a.Pods) == 1 {
		return Admission{Pod: a.Pods[0]}, err
	}
	return Admission{Reason: a.Reason, Fence: a.Fence, Wait: a.Wait}, err
}

// ReleaseRequest is one call of the release script: Instance gives back
// Releases. They ended when the instance's seq was Seq, which orders the
// call after its heartbeats (see release.lua).
type ReleaseRequest struct {
	Fleet    string
	Instance string
	Epoch    string
	Seq      uint64
	Releases []ReleaseCount
}

// releaseKeys are release.lua's KEYS, in its order.
func releaseKeys(k Keys, instance string) []string {
	return []string{k.Load(), k.Avail(), k.Inst(instance), k.Pend(instance), k.Epoch()}
}

// Release gives back the connections of req that its instance holds, in
// one script call, and returns how many it held: ErrEpochFenced when the epoch
// is not the caller's.
func (s *Store) Release(ctx context.Context, req ReleaseRequest) (int, error) {
	hot := s.hot(req.Fleet, req.Instance)
	args := append(make([]any, 0, len(hot.release)+4+3*len(req.Releases)), hot.release...)
	// ARGV, in release.lua's order: epoch, run_check, id, seq, then (pod,
	// n, pending) per release.
	args = append(args, req.Epoch, hot.run, hot.instance, req.Seq)
	for _, r := range req.Releases {
		args = append(args, r.Pod, r.N, r.Pending)
	}
	// The reply: how many it released, -1 when fenced.
	got, err := s.runHot(ctx, hot, scriptRelease, args).Int()
	if err != nil {
		return 0, fmt.Errorf("release %s: %w", req.Fleet, err)
	}
	if got < 0 {
		return 0, fmt.Errorf("release %s: %w", req.Fleet, ErrEpochFenced)
	}
	return got, nil
}
