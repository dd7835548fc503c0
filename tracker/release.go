package tracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
)

// Release frees a connection's slot: locally at once, in Redis by the next
// release call, which carries every release queued meanwhile. While Redis
// is unreachable the slot stays entitled to this instance (Redis still
// counts it), so the share fallback may reuse it; the next heartbeat gives
// it back.
func (t *Tracker) Release(ctx context.Context, id string) error {
	v, ok := t.byConn.Load(id)
	if !ok {
		return fmt.Errorf("release: connection %q: %w", id, ErrUnknownConn)
	}
	f := v.(*fleet)
	// The local update waits for a heartbeat in flight, so that the
	// heartbeat's counts and the entitlement it sets either include the
	// connection (and the release is queued after it) or do not. Without
	// the gate in time, only the local truth changes and the next heartbeat
	// publishes it.
	gated := f.redisUsable() && acquire(ctx, f.gate, time.Now().Add(t.cfg.RedisTimeout)) == nil
	f.mu.Lock()
	// The heartbeat it waited for may have failed (see errGaveUp).
	queued := gated && f.redisUsableLocked()
	c, ok := f.conns[id]
	if !ok {
		f.mu.Unlock()
		if gated {
			f.gate.Release(1)
		}
		return fmt.Errorf("release: connection %q: %w", id, ErrUnknownConn)
	}
	f.removeConnLocked(c)
	queued = queued && !c.uncounted
	// Pending in Redis only if a heartbeat since its admission said so.
	r := releaseReq{pod: c.pod, pending: !c.established && c.admitSeq < f.seq, seq: f.seq}
	switch {
	case !queued:
	case f.ent[c.pod]-f.heldLocked(c.pod) > f.spare[c.pod] && !f.noReuse:
		// Its slot stays in ent until the release leaves the queue, and
		// an admission may take it back meanwhile (reuse).
		r.spare = true
		f.spare[c.pod]++
	case f.ent[c.pod] > 0:
		// Lowered now: a release that never reaches Redis is taken as
		// applied (invariant L), unless it surely did not run (sendReleases).
		r.lowered = true
		f.lowerEntLocked(c.pod)
	}
	f.mu.Unlock()
	if gated {
		f.gate.Release(1)
	}
	t.byConn.Delete(id)
	if queued {
		f.releases.post(r)
	}
	return nil
}

// Flush waits until no release is queued or in flight (every call has
// returned or failed), or ctx ends. Under a steady stream of releases that
// may not happen before ctx ends.
func (t *Tracker) Flush(ctx context.Context) error {
	for _, f := range t.allFleets() {
		if err := f.releases.wait(ctx); err != nil {
			return fmt.Errorf("flush %s: %w", f.name, err)
		}
	}
	return nil
}

// releaseReq is one ended connection for the next release call. seq is the
// instance's seq when it ended: the seq of the heartbeat before its end.
type releaseReq struct {
	pod     string
	pending bool
	seq     uint64
	lowered bool // it took one from ent (there may have been none to take)
	spare   bool // it left its slot in ent, counted in spare (reuse)
}

// DefaultReleaseLinger is Config.ReleaseLinger's default (--release-linger):
// how long a release waits for an admit call to carry it (PROTOCOL.md,
// "Batches"), or for an admission to take its slot back (reuse): one
// script call where there would be two, or none. A slot comes free in
// Redis that much later (up to twice that, see "Reuse"), never sooner.
//
// 5 ms was enough where churn is concentrated (the peer benchmark's
// closed loops: a new admission follows within a millisecond), but at a
// modest rate per Envoy (the open loop's 200/s, holds of 20-200 ms) most
// releases found no admission in 5 ms: 47 % reused, 0.89 script calls a
// lifecycle. At 50 ms, 69 % and 0.42 (README, "Performance"). The cost
// is borne by the other Envoys of a pod at its cap: a slot freed here is
// invisible to them for up to 50-100 ms, so about (ends per second on
// the pod) x 50 ms slots of a full pod are held back, 5 at 100 ends a
// second; an Envoy refused meanwhile is told to retry after seconds
// (retryAfter), so what it loses is the place in the queue, not the cap.
// The releasing Envoy itself takes the slot back at once (reuse).
const DefaultReleaseLinger = 50 * time.Millisecond

// sendReleases makes one release call for the connections that ended
// since the last heartbeat sent, summed per pod.
func (t *Tracker) sendReleases(f *fleet) func(context.Context, []releaseReq) ([]struct{}, error) {
	return func(ctx context.Context, reqs []releaseReq) ([]struct{}, error) {
		f.mu.Lock()
		epoch, seq := f.epoch, f.seq
		counts, lowered := f.releaseCountsLocked(reqs, seq)
		f.mu.Unlock()
		if len(counts) == 0 {
			return nil, nil
		}
		_, err := t.store.Release(ctx, store.ReleaseRequest{Fleet: f.name, Instance: t.cfg.InstanceID, Epoch: epoch, Seq: seq, Releases: counts})
		t.released(f, counts, lowered, seq, err)
		return nil, nil
	}
}

// releaseCountsLocked sums reqs per pod for a release call at seq, with
// how many of each pod's took one from ent. A release whose slot is spare
// takes it out of ent now, as it leaves the queue; one whose slot an
// admission took back (reuse) is not sent: that slot is held again.
func (f *fleet) releaseCountsLocked(reqs []releaseReq, seq uint64) (counts []store.ReleaseCount, lowered []int) {
	at := make(map[string]int, len(reqs)) // pod -> index in counts
	for _, r := range reqs {
		if r.seq < seq {
			// A heartbeat sent since left the connection out: if it ran,
			// Redis ignores this release; if not, Redis over-counts until
			// the next one. (Only a heartbeat changes the epoch, and it
			// moves seq first: what is left is of the current epoch.)
			continue
		}
		if r.spare {
			if f.spare[r.pod] == 0 {
				continue // reused
			}
			f.takeSpareLocked(r.pod)
			if f.ent[r.pod] <= f.heldLocked(r.pod) {
				// The share fallback or an adopted connection took the
				// slot: it is held, and Redis must keep counting it.
				continue
			}
			f.lowerEntLocked(r.pod)
			r.lowered = true
		}
		i, ok := at[r.pod]
		if !ok {
			i = len(counts)
			at[r.pod] = i
			counts = append(counts, store.ReleaseCount{Pod: r.pod})
			lowered = append(lowered, 0)
		}
		counts[i].N++
		if r.pending {
			counts[i].Pending++
		}
		if r.lowered {
			lowered[i]++
		}
	}
	return counts, lowered
}

// released acts on the outcome err of a call that carried counts at seq.
func (t *Tracker) released(f *fleet, counts []store.ReleaseCount, lowered []int, seq uint64, err error) {
	if err != nil {
		// Whether it ran, runs later or not at all, Redis may count
		// these slots or not: the next heartbeat re-states every count
		// (PROTOCOL.md, "Delta heartbeats").
		f.restate()
	}
	switch {
	case err == nil:
	case errors.Is(err, store.ErrEpochFenced):
		t.fence(f, store.FenceEpoch)
	default:
		if notRun(err) {
			// Redis still counts these slots for this instance, unless a
			// heartbeat was sent since (its seq is higher): it published
			// the truth, or may have.
			f.mu.Lock()
			for i, c := range counts {
				if seq == f.seq && lowered[i] > 0 {
					f.ent[c.Pod] += lowered[i]
				}
			}
			f.mu.Unlock()
		}
		t.degrade(f, "release", err)
	}
}

// notRun reports whether err proves a script never ran: the connection was
// never made, or Redis refused the call itself (an error reply that is not
// a script's runtime error). Anything else, a timeout or a reset, may come
// after the script ran.
func notRun(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var rerr redis.Error
	return errors.As(err, &rerr) && !strings.Contains(strings.ToLower(rerr.Error()), "script")
}
