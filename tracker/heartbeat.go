package tracker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Run publishes this instance's state every Heartbeat until ctx ends. The
// first heartbeat runs at once; its error is returned only through logs and
// metrics, since the tracker must keep serving (from its fallback) while
// Redis is down.
func (t *Tracker) Run(ctx context.Context) {
	tick := time.NewTicker(t.cfg.Heartbeat)
	defer tick.Stop()
	for {
		if err := t.Heartbeat(ctx); err != nil && ctx.Err() == nil {
			t.log.Debug("heartbeat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Heartbeat expires stale connections and syncs every fleet once. It returns
// the fleets' errors joined.
func (t *Tracker) Heartbeat(ctx context.Context) error {
	var errs []error
	for _, name := range t.Fleets() {
		if err := t.syncFleet(ctx, t.fleets[name]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (t *Tracker) syncFleet(ctx context.Context, f *fleet) error {
	now := t.now()
	t.expire(f, now)
	res, err := t.sync(ctx, f, now)
	if err != nil {
		return err
	}
	f.mu.Lock()
	newEpoch := res.Epoch != f.epoch
	f.epoch = res.Epoch
	f.mu.Unlock()
	if newEpoch && len(f.cfg.Pods) > 0 {
		// A new epoch means Redis lost its data (or this is the first
		// heartbeat): the static registry goes back in, and one more sync
		// refreshes the fallback's view of the placeable pods.
		if err := t.SetStaticPods(ctx, f.cfg.Name); err != nil {
			return err
		}
		if res, err = t.sync(ctx, f, now); err != nil {
			return err
		}
	}
	if res.EpochCreated {
		t.log.Info("new epoch: Redis had no state for the fleet", "fleet", f.cfg.Name, "epoch", res.Epoch)
	}
	if len(res.Reaped) > 0 {
		t.log.Info("reaped expired tracker instances", "fleet", f.cfg.Name, "instances", res.Reaped)
	}
	return nil
}

// sync publishes the local truth and, on success, ends the fallback.
func (t *Tracker) sync(parent context.Context, f *fleet, now time.Time) (SyncResult, error) {
	// A heartbeat of a large fleet may take longer than one admission; the
	// gate it holds does not make admissions queue past their own deadline
	// (they fall back), so it gets a quarter of the heartbeat interval.
	ctx, cancel := context.WithTimeout(parent, max(t.cfg.RedisTimeout, t.cfg.Heartbeat/4))
	defer cancel()

	if err := f.gate.Acquire(ctx, gateAll); err != nil {
		if parent.Err() == nil {
			t.redisFailed(f, "sync", err)
		}
		return SyncResult{}, fmt.Errorf("sync %s: waiting for admissions: %w", f.cfg.Name, err)
	}
	if err := t.inherit(ctx, f, now); err != nil {
		f.gate.Release(gateAll)
		if parent.Err() == nil {
			t.redisFailed(f, "sync", err)
		}
		return SyncResult{}, err
	}
	f.mu.Lock()
	counts := make([]PodCount, 0, len(f.live)+len(f.inherited))
	for pod, n := range f.live {
		counts = append(counts, PodCount{Pod: pod, Live: n + f.inherited[pod], Established: f.est[pod] + f.inherited[pod]})
	}
	for pod, n := range f.inherited {
		if f.live[pod] == 0 {
			counts = append(counts, PodCount{Pod: pod, Live: n, Established: n})
		}
	}
	oldest := Bucket(now) - BucketSlots
	rej := make([]RejectionCount, 0, len(f.rej))
	for k, n := range f.rej {
		if k.bucket > oldest {
			rej = append(rej, RejectionCount{Reason: k.reason, Bucket: k.bucket, Count: n})
		}
	}
	clear(f.rej)
	f.mu.Unlock()

	res, err := t.store.Sync(ctx, SyncRequest{
		Fleet: f.cfg.Name, Instance: t.cfg.InstanceID, Now: now, LeaseUntil: now.Add(t.cfg.InstanceTTL),
		Counts: counts, Rejections: rej,
	})
	f.gate.Release(gateAll)

	if err != nil {
		f.mu.Lock()
		for _, r := range rej { // flushed by the next heartbeat
			f.rej[rejKey{r.Reason, r.Bucket}] += r.Count
		}
		f.mu.Unlock()
		if parent.Err() == nil { // a stopping tracker is not a Redis outage
			t.redisFailed(f, "sync", err)
		}
		return res, err
	}
	f.mu.Lock()
	if f.joined.IsZero() {
		f.joined = now
	}
	if f.view.ok && !sameIDs(f.view.ids, res.Instances) {
		// Ranks shift when an instance joins or leaves, and instances that
		// have not heartbeated since still rank by the old list: this one
		// takes no share until all of them have (see knownToAll).
		f.joined, f.settled = now, false
	}
	if !f.settled {
		f.settled = knownToAll(res.Instances, t.cfg.InstanceID, f.joined, t.cfg.InstanceTTL)
	}
	if f.view.ok && f.epoch != "" && res.Epoch != f.epoch {
		// Redis lost its data: until the other instances re-published
		// theirs, Redis counts only this one's connections, and admitting
		// through it would fill their pods a second time. Nor can the
		// fallback admit: the others would not know of it when they come
		// back. The fleet refuses (redis_down) until all re-published.
		f.rejoin = &rejoin{expect: f.view.ids, until: now.Add(t.cfg.InstanceTTL)}
		t.log.Warn("Redis lost the fleet's state: refusing until the other instances re-publish theirs",
			"fleet", f.cfg.Name, "epoch", res.Epoch, "waiting_for", len(f.view.ids)-1, "at_most", t.cfg.InstanceTTL)
	}
	if f.rejoin != nil && f.rejoin.done(res.Instances, t.cfg.InstanceID, now) {
		f.rejoin = nil
		t.log.Info("every instance re-published its connections: admitting through Redis again", "fleet", f.cfg.Name, "epoch", res.Epoch)
	}
	f.view = newView(res, counts, t.cfg.InstanceID)
	f.view.settled = f.settled
	f.view.at = now
	recovered := f.degraded
	f.degraded = false
	f.mu.Unlock()
	if recovered {
		t.metrics.Degraded.WithLabelValues(f.cfg.Name).Set(0)
		t.log.Info("redis reachable again, counts re-published", "fleet", f.cfg.Name, "epoch", res.Epoch)
	}
	return res, nil
}

// rejoin is the wait after Redis lost a fleet's state: for the instances of
// the last view to re-publish their counts in the new epoch, or for their
// leases to run out.
type rejoin struct {
	expect []string
	until  time.Time
}

func (r *rejoin) done(alive map[string]time.Time, self string, now time.Time) bool {
	if !now.Before(r.until) {
		return true
	}
	for _, id := range r.expect {
		if _, ok := alive[id]; !ok && id != self {
			return false
		}
	}
	return true
}

// inherit runs once per fleet, before the first heartbeat publishes this
// instance's counts (the caller holds the gate, so no admission is between
// its script and its local record): whatever Redis holds for this instance
// beyond its local truth was left by a previous run whose Envoy may still
// carry those connections. They stay counted for one lease.
func (t *Tracker) inherit(ctx context.Context, f *fleet, now time.Time) error {
	f.mu.Lock()
	done := f.inheritChecked
	f.mu.Unlock()
	if done {
		return nil
	}
	held, err := t.store.InstanceCounts(ctx, f.cfg.Name, t.cfg.InstanceID)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inheritChecked = true
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
			"fleet", f.cfg.Name, "connections", total, "until", f.inheritUntil)
	}
	return nil
}

// sameIDs reports whether ids (sorted) are exactly the instances of leases.
func sameIDs(ids []string, leases map[string]time.Time) bool {
	if len(ids) != len(leases) {
		return false
	}
	for _, id := range ids {
		if _, ok := leases[id]; !ok {
			return false
		}
	}
	return true
}

// knownToAll reports whether every other live instance has heartbeated since
// self joined at joined, and so counts self among the instances its
// fallback shares the headroom with. A lease ends ttl after its heartbeat
// (every instance is assumed to run with the same --instance-ttl).
func knownToAll(leases map[string]time.Time, self string, joined time.Time, ttl time.Duration) bool {
	for id, until := range leases {
		if id != self && !until.Add(-ttl).After(joined) {
			return false
		}
	}
	return true
}

func newView(res SyncResult, counts []PodCount, self string) view {
	v := view{ok: true, load: res.Avail, mine: map[string]int{}, rank: -1}
	for _, c := range counts {
		v.mine[c.Pod] = c.Live
	}
	for pod := range res.Avail {
		v.pods = append(v.pods, pod)
	}
	sort.Strings(v.pods)
	ids := make([]string, 0, len(res.Instances))
	for id := range res.Instances {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	v.instances = len(ids)
	v.ids = ids
	for i, id := range ids {
		if id == self {
			v.rank = i
		}
	}
	return v
}

// expire drops connections Envoy never reported established within
// EstablishTimeout, and established ones whose lease was not renewed within
// LeaseTTL. The heartbeat that follows publishes the release.
func (t *Tracker) expire(f *fleet, now time.Time) {
	f.mu.Lock()
	var pending, lease int
	if len(f.inherited) > 0 && now.After(f.inheritUntil) {
		for _, n := range f.inherited {
			lease += n
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
		f.dropLocked(c)
		t.byConn.Delete(c.id)
	}
	f.mu.Unlock()
	if pending > 0 {
		t.metrics.Expired.WithLabelValues(f.cfg.Name, "establish").Add(float64(pending))
	}
	if lease > 0 {
		t.metrics.Expired.WithLabelValues(f.cfg.Name, "lease").Add(float64(lease))
	}
	if pending+lease > 0 {
		t.log.Info("released connections Envoy stopped reporting", "fleet", f.cfg.Name, "never_established", pending, "lease_expired", lease)
	}
}

// SetStaticPods writes the fleet's static pod list (all ready) to Redis.
func (t *Tracker) SetStaticPods(ctx context.Context, fleetName string) error {
	f, err := t.fleet(fleetName)
	if err != nil {
		return err
	}
	pods := make([]Pod, len(f.cfg.Pods))
	for i, addr := range f.cfg.Pods {
		pods[i] = Pod{Addr: addr, Name: addr, Ready: true}
	}
	ctx, cancel := context.WithTimeout(ctx, 4*t.cfg.RedisTimeout)
	defer cancel()
	if err := t.store.SetPods(ctx, fleetName, pods); err != nil {
		t.metrics.RedisErrors.WithLabelValues("set_pods").Inc()
		return fmt.Errorf("static pods: %w", err)
	}
	return nil
}
