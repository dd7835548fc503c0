package tracker

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wsgate/wsgate/fleets"
)

// conn is one connection this instance admitted: the local truth that every
// heartbeat re-publishes.
type conn struct {
	id, pod     string
	established bool
	admitted    time.Time
	renewed     time.Time
	// uncounted: Redis does not count the connection for this instance
	// (Adopt took it over after its slot was released) until a heartbeat
	// sent after adoptSeq publishes it. Its release then changes nothing
	// in Redis, where it would free another connection's slot.
	uncounted bool
	adoptSeq  uint64
	// admitSeq is the instance's seq when it was admitted: a heartbeat sent
	// after it published it pending (pend:<id>) if it was not established.
	admitSeq uint64
}

func (t *Tracker) recordLocked(f *fleet, pod string, now time.Time, fallback bool) Result {
	c := &conn{id: t.idPrefix + strconv.FormatUint(t.idSeq.Add(1), 36), pod: pod, admitted: now, renewed: now, admitSeq: f.seq}
	f.conns[c.id] = c
	f.live[pod]++
	f.movedLocked(pod)
	t.byConn.Store(c.id, f)
	return Result{Fleet: f.label, Admitted: true, Conn: c.id, Pod: pod, Fallback: fallback}
}

// Establish marks a connection established (Envoy's tunnel is up).
func (t *Tracker) Establish(id string) error { return t.touch(id, true) }

// Renew extends a connection's lease (Envoy's periodic access-log entry).
func (t *Tracker) Renew(id string) error { return t.touch(id, true) }

func (t *Tracker) touch(id string, established bool) error {
	v, ok := t.byConn.Load(id)
	if !ok {
		return fmt.Errorf("connection %q: %w", id, ErrUnknownConn)
	}
	f := v.(*fleet)
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.conns[id]
	if !ok {
		return fmt.Errorf("connection %q: %w", id, ErrUnknownConn)
	}
	c.renewed = t.now()
	if established && !c.established {
		c.established = true
		f.est[c.pod]++
		f.movedLocked(c.pod)
	}
	return nil
}

// Adopt takes over a connection Envoy's access log names (by id, fleet and
// upstream pod) that this tracker does not hold: one a previous run of this
// instance admitted, or one this process issued and released because its
// renewals were lost although Envoy still carries it. Counting it again
// tells the truth, even if its slot was given away meanwhile (the instance
// was reaped, Redis lost its data, its lease ran out here) and even above
// the cap: the pod then takes nothing more until it is under it again.
// Counting it only ever raises what Redis counts (PROTOCOL.md, "Adoption").
// ended says the entry reports the connection's end: an inherited slot is
// then given back, anything else needs nothing.
//
// A connection of a previous run takes one of the slots Redis still held
// for the instance when this run began (inherited) while there are any;
// beyond them, and for a connection this process released, it is adopted
// uncounted: the next heartbeat publishes it.
//
// Only what this instance can account for is adopted: ids of its own
// format (idTag), of this process up to the last one it issued or of a
// previous run of this instance (its instance tag), on a pod of the
// fleet's registry or one Redis held this instance's connections on.
// Anything else is ErrNotAdoptable: a misrouted or malformed entry must
// not make Redis count slots nobody holds. ErrUnknownConn when there is
// nothing to take over.
func (t *Tracker) Adopt(fleetName, id, pod string, ended bool) error {
	fam, err := t.family(fleetName)
	if err != nil {
		return fmt.Errorf("adopt: %w", err)
	}
	if err := fleets.ValidatePodAddr(pod); err != nil {
		return fmt.Errorf("adopt: connection %q: %w", id, err)
	}
	f := adoptGroup(fam, pod)
	mine, previous := t.ownID(id)
	if !mine && !previous {
		return fmt.Errorf("adopt: connection %q: not an id of instance %s: %w", id, t.cfg.InstanceID, ErrNotAdoptable)
	}
	now := t.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, held := f.conns[id]; held {
		return nil
	}
	inherited := previous && f.inherited[pod] > 0 && now.Before(f.inheritUntil)
	if ended {
		if !inherited {
			return fmt.Errorf("adopt: ended connection %q: %w", id, ErrUnknownConn)
		}
		if f.inherited[pod]--; f.inherited[pod] == 0 {
			delete(f.inherited, pod)
		}
		f.movedLocked(pod)
		return nil // the next heartbeat publishes the release
	}
	switch {
	case inherited:
		if f.inherited[pod]--; f.inherited[pod] == 0 {
			delete(f.inherited, pod)
		}
	case !f.inRegistryLocked(pod):
		return fmt.Errorf("adopt: connection %q: pod %s is not in fleet %s's registry: %w", id, pod, f.label, ErrNotAdoptable)
	}
	// An inherited slot is counted in Redis for this instance. Anything
	// else is not, until the next heartbeat publishes it: a slot this
	// process released, or a connection of a previous run beyond what
	// Redis still held for the instance when this run began (it was
	// reaped or forgotten, Redis lost its data, or that run had let the
	// connection go).
	c := &conn{id: id, pod: pod, established: true, admitted: now, renewed: now, uncounted: !inherited, adoptSeq: f.seq}
	f.conns[id] = c
	f.live[pod]++
	f.est[pod]++
	f.movedLocked(pod)
	if c.uncounted {
		f.uncounted++
	}
	t.byConn.Store(id, f)
	// A retiring fleet's group that left Redis heartbeats again, to
	// publish it (retire checks this under f.mu).
	f.gone.Store(false)
	return nil
}

// adoptGroup is the group of fam a connection on pod is adopted into: the
// one it was admitted and is counted in (PROTOCOL.md, "Shards"). That is
// the group that already holds state for the pod on this instance —
// inherited slots first (what Redis counted for a previous run), then
// slots, connections or counts of this run (ent, live, the view's mine),
// then the group whose registry lists it — and only when none does the
// pod's group by this instance's shards, fleets.GroupOf: a registry
// written by another layout (the scaler's discovery, a tracker run with
// other shards) may have put the pod in another group than GroupOf says.
func adoptGroup(fam *family, pod string) *fleet {
	if len(fam.groups) == 1 {
		return fam.groups[0]
	}
	for _, held := range []func(f *fleet) bool{
		func(f *fleet) bool { return f.inherited[pod] > 0 },
		func(f *fleet) bool { return f.ent[pod] > 0 || f.live[pod] > 0 || f.view.mine[pod] > 0 },
		func(f *fleet) bool { _, ok := slices.BinarySearch(f.view.pods, pod); return ok },
	} {
		for _, f := range fam.groups {
			f.mu.Lock()
			ok := held(f)
			f.mu.Unlock()
			if ok {
				return f
			}
		}
	}
	return fam.groups[fleets.GroupOf(pod, len(fam.groups))]
}

// idRandomBytes is the size of a process's random part of connection ids.
const idRandomBytes = 6

// instanceTag is the part of every connection id that names the instance:
// 8 hex digits of a hash of its id.
func instanceTag(instance string) string {
	h := sha256.Sum256([]byte(instance))
	return hex.EncodeToString(h[:4])
}

// ownID says whether id is one this process issued (mine: its prefix, a
// counter it reached) or one of a previous run of this instance (its tag,
// another random part).
func (t *Tracker) ownID(id string) (mine, previous bool) {
	n := len(t.idPrefix)
	if len(id) <= n || len(id) > n+13 || !strings.HasPrefix(id, t.idTag) {
		return false, false
	}
	if _, err := hex.DecodeString(id[len(t.idTag):n]); err != nil {
		return false, false
	}
	seq, err := strconv.ParseUint(id[n:], 36, 64)
	if err != nil || seq == 0 {
		return false, false
	}
	if id[:n] == t.idPrefix {
		return seq <= t.idSeq.Load(), false
	}
	return false, true
}

// expire drops connections Envoy never reported established within
// EstablishTimeout, and established ones whose lease was not renewed within
// LeaseTTL. The heartbeat that follows publishes the release.
func (t *Tracker) expire(f *fleet, now time.Time) {
	f.mu.Lock()
	var pending, lease int
	// Inherited slots do not expire while the layout guard refuses Redis
	// (PROTOCOL.md, "Shards"): they are what keeps a connection Envoy
	// still carries counted in the group it was admitted in, which this
	// instance's shards may not be able to adopt it into.
	if len(f.inherited) > 0 && now.After(f.inheritUntil) && f.fam.layoutUsable() {
		for pod, n := range f.inherited {
			lease += n
			f.movedLocked(pod)
			// Not entitlement to reuse either: an inherited slot may be a
			// previous run's grant whose WAIT failed, counted by this
			// primary only (PROTOCOL.md, "Replication and failover"), and
			// ent grows only by acknowledged grants. The heartbeat that
			// follows lowers ent to what is held anyway, but only once it
			// has the gate: one that times out waiting for admissions
			// would leave the share fallback free to reuse these slots.
			if f.ent[pod] -= n; f.ent[pod] <= 0 {
				delete(f.ent, pod)
			}
		}
		clear(f.inherited)
	}
	for _, c := range f.conns {
		switch {
		case !c.established && now.Sub(c.admitted) > t.cfg.EstablishTimeout:
			pending++
		case c.established && now.Sub(c.renewed) > t.cfg.LeaseTTL:
			lease++
		default:
			continue
		}
		f.removeConnLocked(c)
		t.byConn.Delete(c.id)
	}
	f.mu.Unlock()
	if pending > 0 {
		t.metrics.Expired.WithLabelValues(f.label, "establish").Add(float64(pending))
	}
	if lease > 0 {
		t.metrics.Expired.WithLabelValues(f.label, "lease").Add(float64(lease))
	}
	if pending+lease > 0 {
		t.log.Info("released connections Envoy stopped reporting", "fleet", f.name, "never_established", pending, "lease_expired", lease)
	}
}
