package tracker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// Run publishes this instance's state every Heartbeat until ctx ends. The
// first heartbeat runs at once; its error is returned only through logs and
// metrics, since the tracker must keep serving (from its fallback) while
// Redis is down. When ctx ends, Run waits (up to RedisTimeout) for the
// releases already queued to reach Redis.
func (t *Tracker) Run(ctx context.Context) {
	tick := time.NewTicker(t.cfg.Heartbeat)
	defer tick.Stop()
	for {
		if err := t.Heartbeat(ctx); err != nil && ctx.Err() == nil {
			t.log.Debug("heartbeat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), t.cfg.RedisTimeout)
			defer cancel()
			if err := t.Flush(fctx); err != nil {
				t.log.Warn("stopping with releases not yet in Redis: they stay counted until this instance leaves or is reaped", "err", err)
			}
			return
		case <-tick.C:
		case <-t.kick:
		}
	}
}

// AwaitGranting heartbeats every Heartbeat until the epoch of every fleet
// grants admissions (a new epoch's recovery wait is over, see PROTOCOL.md),
// or ctx ends. It returns right after a successful heartbeat, so leases are
// fresh. For a tracker driven by hand (tests, tools); Run needs none of it.
func (t *Tracker) AwaitGranting(ctx context.Context) error {
	tick := time.NewTicker(t.cfg.Heartbeat)
	defer tick.Stop()
	for {
		err := t.Heartbeat(ctx)
		if err == nil && t.granting() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("await granting: %w (last heartbeat: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

func (t *Tracker) granting() bool {
	for _, f := range t.allFleets() {
		f.mu.Lock()
		ok := f.granting
		f.mu.Unlock()
		if !ok {
			return false
		}
	}
	return true
}

// Heartbeat expires stale connections and syncs every fleet once. It returns
// the fleets' errors joined.
func (t *Tracker) Heartbeat(ctx context.Context) error {
	var errs []error
	for _, f := range t.allFleets() {
		if err := t.heartbeatFleet(ctx, f); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (t *Tracker) heartbeatFleet(ctx context.Context, f *fleet) error {
	if t.left.Load() {
		return nil
	}
	if f.group == 0 {
		// The layout guard, before the fleet's first heartbeat and with
		// each of group 0's: its failure is the sync's below, most likely.
		if err := t.checkLayout(ctx, f.fam); err != nil {
			t.log.Debug("layout check failed", "fleet", f.label, "err", err)
		}
	}
	now := t.now()
	t.expire(f, now)
	f.mu.Lock()
	known := f.epoch
	f.mu.Unlock()
	res, err := t.sync(ctx, f, now)
	if err != nil {
		return err
	}
	if newEpoch := res.Epoch != known; newEpoch && len(f.conf().Pods) > 0 {
		f.podsDirty.Store(true)
	}
	if f.podsDirty.Load() && f.fam.layoutUsable() {
		// A new epoch means Redis lost its data (or this is the first
		// heartbeat): the static registry goes back in, as it does when
		// Apply changed it, and one more sync refreshes the fallback's
		// view of the placeable pods. A list Apply emptied is written
		// too: the pods it dropped leave the registry, as discovery
		// removes a pod, and their counted connections stay counted
		// until they end. Not while the layout guard refuses Redis: a
		// registry written in another layout would put a pod in two
		// groups (PROTOCOL.md, "Shards").
		f.podsDirty.Store(false)
		if err := t.setStaticPods(ctx, f); err != nil {
			f.podsDirty.Store(true)
			return err
		}
		if res, err = t.sync(ctx, f, now); err != nil {
			return err
		}
	}
	if res.EpochCreated {
		t.log.Info("new epoch: Redis had no state for the fleet", "fleet", f.name, "epoch", res.Epoch)
	}
	if len(res.Reaped) > 0 {
		t.log.Info("reaped expired tracker instances", "fleet", f.name, "instances", res.Reaped)
	}
	return t.retire(ctx, f)
}

// sync publishes the local truth and, on success, ends the fallback: the
// model's sync_* step. Under the whole gate, so that no admission or release
// comes between them, it takes what to publish (syncSnapshot), calls the
// script and sets the entitlement the script published (syncCall); once the
// gate is open again, it takes in the rest of Redis' answer (syncView).
func (t *Tracker) sync(parent context.Context, f *fleet, now time.Time) (store.SyncResult, error) {
	// A heartbeat of a large fleet may take longer than one admission; the
	// gate it holds does not make admissions queue past their own deadline
	// (they leave Redis), so it gets a quarter of the heartbeat interval.
	ctx, cancel := context.WithTimeout(parent, max(t.cfg.RedisTimeout, t.cfg.Heartbeat/4))
	defer cancel()
	res, snap, err := t.syncCall(ctx, parent, f, now)
	if err != nil {
		return res, err
	}
	t.syncView(f, res, snap.held, now)
	return res, nil
}

// syncSnap is what a heartbeat publishes: req, and held, every pod's
// counts, which req.Counts are only some of when req is a delta; restates
// is fleet.restates when it was taken.
type syncSnap struct {
	req      store.SyncRequest
	held     []store.PodCount
	restates uint64
}

// syncCall is the part of sync under the whole gate, which it releases on
// return: the snapshot, the script, and what its outcome changes before an
// admission may run again (syncEntitled, syncFailed). parent is sync's
// caller's context: once it ended, a failure is no Redis outage.
func (t *Tracker) syncCall(ctx, parent context.Context, f *fleet, now time.Time) (store.SyncResult, syncSnap, error) {
	if err := f.gate.Acquire(ctx, gateAll); err != nil {
		if parent.Err() == nil {
			t.degrade(f, "sync", err)
		}
		return store.SyncResult{}, syncSnap{}, fmt.Errorf("sync %s: waiting for admissions: %w", f.name, err)
	}
	defer f.gate.Release(gateAll)
	if t.left.Load() { // Leave ran while this waited: publish nothing
		return store.SyncResult{}, syncSnap{}, fmt.Errorf("sync %s: %w", f.name, errLeft)
	}
	if err := t.inherit(ctx, f, now); err != nil {
		// inherit fails only before its first success, so before any
		// heartbeat succeeded: Redis is not usable yet, and no admission or
		// release waiting for the gate can tell whether the fleet is
		// degraded before or after it opens.
		if parent.Err() == nil {
			t.degrade(f, "sync", err)
		}
		return store.SyncResult{}, syncSnap{}, err
	}
	snap := t.syncSnapshot(f, now)
	sent := t.now()
	res, err := t.store.Sync(ctx, snap.req)
	if err == nil && !res.NeedFull {
		t.metrics.Heartbeats.WithLabelValues(f.label, heartbeatKind(snap.req)).Inc()
	}
	if err == nil && res.NeedFull {
		// Redis no longer holds what the delta was relative to (PROTOCOL.md,
		// "Delta heartbeats"): the full one at once, under the same gate.
		// Meanwhile this instance is refused 'lease' if it was reaped or
		// left, or in a new epoch: nothing is admitted on a copy that
		// misses its connections. The refused call flushed nothing.
		created := res.EpochCreated
		t.metrics.Heartbeats.WithLabelValues(f.label, "refused_delta").Inc()
		f.mu.Lock()
		f.restateLocked()
		for _, r := range snap.req.Rejections {
			f.rej[rejKey{r.Reason, r.Bucket}] += r.Count
		}
		f.mu.Unlock()
		snap = t.syncSnapshot(f, now)
		sent = t.now()
		res, err = t.store.Sync(ctx, snap.req)
		if err == nil {
			t.metrics.Heartbeats.WithLabelValues(f.label, heartbeatKind(snap.req)).Inc()
		}
		res.EpochCreated = res.EpochCreated || created
	}
	if err == nil && res.Stale {
		// A previous run of this instance id got further: number on from it.
		f.mu.Lock()
		f.seq = max(f.seq, res.Seq)
		f.mu.Unlock()
		err = fmt.Errorf("sync %s: seq %d behind %d in Redis", f.name, snap.req.Seq, res.Seq)
	}
	if err != nil {
		t.syncFailed(parent, f, snap.req, err)
		return res, snap, err
	}
	t.syncEntitled(f, snap, res.Epoch, sent)
	return res, snap, nil
}

// heartbeatKind is heartbeats_total's kind label for req, once Redis
// answered it (a failed call is counted by redis_errors_total, a refused
// delta as refused_delta).
func heartbeatKind(req store.SyncRequest) string {
	if req.Base != nil {
		return "delta"
	}
	return "full"
}

// syncSnapshot takes what a heartbeat publishes: what the instance holds per
// pod (as a delta, only what moved) and in all, the rejections buffered since the
// last one (taken out of the buffer; syncFailed puts them back), the next
// seq, and the epoch to confirm once a full instance TTL of this clock has
// passed since it first saw it.
func (t *Tracker) syncSnapshot(f *fleet, now time.Time) syncSnap {
	f.mu.Lock()
	defer f.mu.Unlock()
	held := make([]store.PodCount, 0, len(f.live)+len(f.inherited))
	for pod, n := range f.live {
		held = append(held, store.PodCount{Pod: pod, Live: n + f.inherited[pod], Established: f.est[pod] + f.inherited[pod]})
	}
	for pod, n := range f.inherited {
		if f.live[pod] == 0 {
			held = append(held, store.PodCount{Pod: pod, Live: n, Established: n})
		}
	}
	counts, base := f.deltaLocked(held)
	// The whole total, a delta's too: Redis publishes it for the scaler
	// (PROTOCOL.md, "The fleet's live count").
	total := 0
	for _, c := range held {
		total += c.Live
	}
	clear(f.moved)
	// The script replaces this instance's slots with what it holds: from
	// now on it relies on no more, whether or not the reply comes back
	// (invariant L).
	f.lowerEntToHeldLocked()
	oldest := store.Bucket(now) - store.BucketSlots
	rej := make([]store.RejectionCount, 0, len(f.rej))
	for k, n := range f.rej {
		if k.bucket > oldest {
			rej = append(rej, store.RejectionCount{Reason: k.reason, Bucket: k.bucket, Count: n})
		}
	}
	clear(f.rej)
	f.seq++
	req := store.SyncRequest{
		Fleet: f.name, Instance: t.cfg.InstanceID, Lease: t.cfg.InstanceTTL, RecoveryWait: t.cfg.InstanceTTL,
		Seq: f.seq, Base: base, Counts: counts, Live: total, Rejections: rej, Reap: f.toReap,
		WatchInstances: t.cfg.ExpiredInstances == fleets.ExpiredReap && f.stalled.Due(),
		// whether a promoted replica may end its recovery wait early
		WaitReplicas: t.cfg.WaitReplicas,
	}
	if f.epoch != "" && !f.granting && now.Sub(f.epochSeen) >= t.cfg.InstanceTTL {
		// A full TTL of this clock since it first saw the epoch, which was
		// after the epoch began: the recovery wait is over, whatever
		// Redis' clock did meanwhile.
		req.Confirm = f.epoch
	}
	return syncSnap{req: req, held: held, restates: f.restates}
}

// deltaLocked picks what a heartbeat of held sends (PROTOCOL.md, "Delta
// heartbeats"): while a delta may be sent, the pods whose counts moved
// here since the last snapshot or differ from what the last acknowledged
// heartbeat left in Redis, a pod held no more with 0 and 0, relative to
// that heartbeat (base); otherwise all of held and no base (a full one).
func (f *fleet) deltaLocked(held []store.PodCount) ([]store.PodCount, *store.SyncBase) {
	if !f.delta || f.deltas >= restateEvery-1 {
		return held, nil
	}
	var counts []store.PodCount
	for _, c := range held {
		_, moved := f.moved[c.Pod]
		if moved || f.synced[c.Pod] != (podCounts{c.Live, c.Established}) {
			counts = append(counts, c)
		}
	}
	for pod := range f.synced {
		if f.heldLocked(pod) == 0 {
			counts = append(counts, store.PodCount{Pod: pod})
		}
	}
	for pod := range f.moved {
		if _, was := f.synced[pod]; !was && f.heldLocked(pod) == 0 {
			// moved and back to nothing: Redis may still count what a
			// release it ignored did not take away
			counts = append(counts, store.PodCount{Pod: pod})
		}
	}
	base := f.base
	return counts, &base
}

// syncEntitled takes in a heartbeat snap that succeeded in epoch, sent at
// sent: the entitlement is what it published, the connections adopted
// before it are counted, the local lease runs from when it was sent, and
// the next heartbeat may be a delta relative to it. Under the gate still:
// no admission between the script and this.
func (t *Tracker) syncEntitled(f *fleet, snap syncSnap, epoch string, sent time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	req := snap.req
	clear(f.ent)
	clear(f.synced)
	for _, c := range snap.held {
		f.ent[c.Pod] = c.Live
		f.synced[c.Pod] = podCounts{c.Live, c.Established}
	}
	f.delta, f.base = f.restates == snap.restates, store.SyncBase{Epoch: epoch, Seq: req.Seq}
	if req.Base != nil {
		f.deltas++
	} else {
		f.deltas = 0
	}
	if f.uncounted > 0 { // adopted before this heartbeat: published now
		for _, c := range f.conns {
			if c.uncounted && c.adoptSeq < req.Seq {
				c.uncounted = false
				f.uncounted--
			}
		}
	}
	f.localLeaseUntil, f.clock = sent.Add(t.cfg.InstanceTTL), t.now
}

// syncFailed takes in a heartbeat req that failed (err) or was stale: its
// rejections go with the next one, and the fleet is degraded. Before the
// gate opens: the script may still run, and an admission through Redis
// after it gave up would then be missing from the count it publishes
// (errGaveUp).
func (t *Tracker) syncFailed(parent context.Context, f *fleet, req store.SyncRequest, err error) {
	f.mu.Lock()
	// it may have run, or run later: the next heartbeat is full
	f.restateLocked()
	for _, r := range req.Rejections { // flushed by the next heartbeat
		f.rej[rejKey{r.Reason, r.Bucket}] += r.Count
	}
	f.mu.Unlock()
	if parent.Err() == nil { // a stopping tracker is not a Redis outage
		t.degrade(f, "sync", err)
	} else {
		f.mu.Lock()
		f.degraded = true
		f.mu.Unlock()
	}
}

// syncView takes in the rest of a successful heartbeat's answer res, once
// the gate is open: the epoch and whether it grants, the view of the fleet
// (counts is what the heartbeat published), the instances to reap, and the
// end of the fallback.
func (t *Tracker) syncView(f *fleet, res store.SyncResult, counts []store.PodCount, now time.Time) {
	f.mu.Lock()
	if f.epoch != "" && res.Epoch != f.epoch {
		t.log.Warn("Redis lost or reloaded the fleet's state: it grants nothing until every instance has had a lease to re-publish its connections",
			"fleet", f.name, "epoch", res.Epoch, "for", res.Recovering.String())
	}
	if res.Epoch != f.epoch {
		f.epochSeen = t.now()
	}
	f.epoch, f.granting = res.Epoch, res.Recovering == 0
	f.lastHeartbeat = time.Now()
	f.recoveryEnd = time.Time{}
	if !f.granting {
		f.recoveryEnd = f.lastHeartbeat.Add(max(res.Recovering, f.epochSeen.Add(t.cfg.InstanceTTL).Sub(t.now())))
	}
	gen := f.view.gen + 1
	f.view = newView(res, counts, f.conf().MaxConnectionsPerPod)
	f.view.gen = gen
	f.toReap = nil
	if res.Instances != nil { // asked for (WatchInstances)
		f.toReap = f.stalled.Observe(res.Instances, t.cfg.InstanceID, now)
	}
	recovered := f.degraded || f.fenced
	f.degraded, f.fenced, f.fencedBy = false, false, ""
	if recovered {
		// Under the lock, so that no scrape sees the fallback active
		// beside a fleet that grants or recovers (collector.go).
		t.setDegradedLocked(f, false)
	}
	f.mu.Unlock()
	if recovered {
		t.log.Info("redis reachable again, counts re-published", "fleet", f.name, "epoch", res.Epoch)
	}
}

// inherit runs once per fleet, before the first heartbeat publishes this
// instance's counts (the caller holds the gate, so no admission is between
// its script and its local record): whatever Redis holds for this instance
// beyond its local truth was left by a previous run whose Envoy may still
// carry those connections. They stay counted for one lease. This run's seqs
// start above the previous run's, so Redis ignores a call of that run that
// runs late.
func (t *Tracker) inherit(ctx context.Context, f *fleet, now time.Time) error {
	f.mu.Lock()
	done := f.inheritChecked
	f.mu.Unlock()
	if done {
		return nil
	}
	held, seq, err := t.store.Resume(ctx, f.name, t.cfg.InstanceID)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inheritChecked = true
	f.seq = max(f.seq, seq)
	f.inherited = map[string]int{}
	total := 0
	for pod, n := range held {
		if extra := n - f.live[pod]; extra > 0 {
			f.inherited[pod] = extra
			total += extra
		}
	}
	if total > 0 {
		f.inheritUntil = now.Add(t.cfg.LeaseTTL)
		t.log.Info("kept the connections a previous run of this instance left in Redis until their lease ends",
			"fleet", f.name, "connections", total, "until", f.inheritUntil)
	}
	return nil
}

// SetStaticPods writes the fleet's static pod list (all ready) to Redis:
// each group's pods to its registry. Refused while Redis records another
// layout (PROTOCOL.md, "Shards"): the heartbeats write them once it agrees.
func (t *Tracker) SetStaticPods(ctx context.Context, fleetName string) error {
	fam, err := t.family(fleetName)
	if err != nil {
		return err
	}
	if err := t.checkLayout(ctx, fam); err != nil {
		return fmt.Errorf("static pods: %w", err)
	}
	if !fam.layoutUsable() {
		rec, _, _ := t.LayoutMismatch(fleetName)
		return fmt.Errorf("static pods of %s: Redis records a layout of %d groups, this instance has %d: not written (README, \"Sharded fleets\")", fleetName, rec, len(fam.groups))
	}
	for _, f := range fam.groups {
		if err := t.setStaticPods(ctx, f); err != nil {
			return err
		}
	}
	return nil
}

// setStaticPods writes group f's static pods (all ready) to its registry.
func (t *Tracker) setStaticPods(ctx context.Context, f *fleet) error {
	static := f.conf().Pods
	pods := make([]fleets.Pod, len(static))
	for i, addr := range static {
		pods[i] = fleets.Pod{Addr: addr, Name: addr, Ready: true}
	}
	ctx, cancel := context.WithTimeout(ctx, 4*t.cfg.RedisTimeout)
	defer cancel()
	if err := t.store.SetPods(ctx, f.name, pods); err != nil {
		t.metrics.RedisErrors.WithLabelValues("set_pods").Inc()
		return fmt.Errorf("static pods: %w", err)
	}
	return nil
}
