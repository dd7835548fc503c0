package tracker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// The replication check (PROTOCOL.md, "Replication and failover"): at
// start and at each new epoch of a fleet (a new epoch is what a failover
// or a restart of Redis looks like), the tracker reads how the fleet's
// Redis replicates and says plainly when it cannot keep the cap under
// split brain, and which flag or setting fixes it.
//
// ReplicationCheck refuse fails CheckReplication, so that the tracker does
// not start. At a later epoch it does not stop admitting: the tracker is
// serving, and refusing every admission through Redis turns a breach that
// needs a double fault (a failover during a partition) into a certain
// outage of every fleet; it logs the risk as an error instead, and the
// gauge wsgate_tracker_redis_replication_safe says 0.

// ErrSplitBrainRisk: with ReplicationCheck refuse, the Redis of a fleet
// cannot keep the cap under split brain.
var ErrSplitBrainRisk = errors.New("Redis cannot keep the cap under split brain")

// replicationState is what the check saw last: per fleet, the epoch it
// checked ("*": checked before the fleet had one).
//
// safe is each group's last finding (1 safe, 0 not): a fleet's gauge is
// the least over all its groups, a group never checked counting as 0, so
// that a fleet whose groups were checked in part does not show safe.
type replicationState struct {
	mu      sync.Mutex
	checked map[string]string
	safe    map[string]float64
}

// CheckReplication checks the Redis of every fleet now (at start). It
// returns an error wrapping ErrSplitBrainRisk when ReplicationCheck is
// refuse and one cannot keep the cap; every finding is logged. A Redis it
// cannot reach is logged and checked at the fleet's first epoch instead:
// the tracker must start (and serve from its fallback) while Redis is down.
func (t *Tracker) CheckReplication(ctx context.Context) error {
	var names []string
	for _, f := range t.allFleets() {
		names = append(names, f.name)
	}
	risky, checked := t.checkReplication(ctx, names, true)
	t.repl.mu.Lock()
	for _, name := range checked {
		if _, ok := t.repl.checked[name]; !ok {
			t.repl.checked[name] = "*"
		}
	}
	t.repl.mu.Unlock()
	if len(risky) > 0 && t.cfg.ReplicationCheck == ReplicationRefuse {
		return fmt.Errorf("fleets %s: %w (--redis-replication-check=refuse; the log says what to change)", strings.Join(risky, ", "), ErrSplitBrainRisk)
	}
	return nil
}

// WatchReplication checks a fleet's Redis again whenever the fleet has a
// new epoch, looking every Heartbeat, until ctx ends. Run it beside Run,
// after CheckReplication.
func (t *Tracker) WatchReplication(ctx context.Context) {
	tick := time.NewTicker(t.cfg.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t.checkNewEpochs(ctx)
	}
}

// checkNewEpochs checks the fleets whose epoch changed since their last
// check (or that were never checked and now have one).
func (t *Tracker) checkNewEpochs(ctx context.Context) {
	epochs := map[string]string{}
	for _, f := range t.allFleets() {
		f.mu.Lock()
		if f.epoch != "" {
			epochs[f.name] = f.epoch
		}
		f.mu.Unlock()
	}
	var due []string
	t.repl.mu.Lock()
	for name, epoch := range epochs {
		switch last, ok := t.repl.checked[name]; {
		case ok && last == "*":
			t.repl.checked[name] = epoch // the start's check was of it
		case !ok || last != epoch:
			due = append(due, name)
		}
	}
	t.repl.mu.Unlock()
	if len(due) == 0 {
		return
	}
	sort.Strings(due)
	_, checked := t.checkReplication(ctx, due, false)
	t.repl.mu.Lock()
	for _, name := range checked {
		t.repl.checked[name] = epochs[name]
	}
	t.repl.mu.Unlock()
}

// checkReplication checks the Redis of fleets, logs what it found once
// per server, and sets each fleet's gauge. It returns the fleets whose
// Redis cannot keep the cap, and those it could check.
func (t *Tracker) checkReplication(ctx context.Context, names []string, atStart bool) (risky, checked []string) {
	ctx, cancel := context.WithTimeout(ctx, max(4*t.cfg.RedisTimeout, time.Second))
	defer cancel()
	setup := store.SplitBrainSetup{Topology: t.topology, WaitReplicas: t.cfg.WaitReplicas, Reap: t.cfg.ExpiredInstances == fleets.ExpiredReap}
	type server struct {
		r      store.Replication
		fleets []string
	}
	var servers []*server
	byAddr := map[string]*server{}
	for _, name := range names {
		r, err := t.store.Replication(ctx, name)
		if err != nil {
			t.log.Warn("could not check whether Redis keeps the cap under split brain; checking again at the fleet's next epoch",
				"fleet", name, "redis", store.DescribeRedisError(err), "err", err)
			continue
		}
		checked = append(checked, name)
		s := byAddr[r.Addr]
		if s == nil {
			s = &server{r: r}
			byAddr[r.Addr] = s
			servers = append(servers, s)
		}
		s.fleets = append(s.fleets, name)
	}
	found := map[string]float64{}
	defer t.publishReplication(found)
	for _, s := range servers {
		risks, notes := s.r.SplitBrainRisks(setup), s.r.SplitBrainNotes(setup)
		safe := 1.0
		if len(risks) > 0 {
			safe = 0
			risky = append(risky, s.fleets...)
		}
		for _, name := range s.fleets {
			found[name] = safe
		}
		attrs := []any{"fleets", s.fleets, "redis", s.r.Addr, "topology", string(setup.Topology), "role", s.r.Role, "replicas", s.r.Replicas,
			"wait_replicas", t.cfg.WaitReplicas, "expired_instances", string(t.cfg.ExpiredInstances)}
		if s.r.ConfigRead {
			attrs = append(attrs, "min_replicas_to_write", s.r.MinReplicasToWrite, "min_replicas_max_lag", s.r.MinReplicasMaxLag)
		} else {
			attrs = append(attrs, "min_replicas", "could not read (CONFIG GET refused: "+s.r.ConfigErr+")")
		}
		for _, n := range notes {
			t.log.Warn(n, attrs...)
		}
		switch {
		case len(risks) == 0:
			t.log.Info("Redis replication checked: the cap holds under split brain", attrs...)
		case t.cfg.ReplicationCheck == ReplicationRefuse && atStart:
			t.log.Error("Redis cannot keep the cap under split brain: "+strings.Join(risks, "; ")+" (--redis-replication-check=refuse: not starting)", attrs...)
		case t.cfg.ReplicationCheck == ReplicationRefuse:
			t.log.Error("Redis cannot keep the cap under split brain: "+strings.Join(risks, "; ")+" (--redis-replication-check=refuse: found at a new epoch; admissions go on, wsgate_tracker_redis_replication_safe is 0)", attrs...)
		default:
			t.log.Warn("Redis cannot keep the cap under split brain: "+strings.Join(risks, "; "), attrs...)
		}
	}
	return risky, checked
}

// publishReplication takes in the groups' findings of a check and sets the
// gauge of each fleet they belong to: the least over all the fleet's
// groups (they may be on other servers), 0 for a group never checked.
func (t *Tracker) publishReplication(found map[string]float64) {
	t.repl.mu.Lock()
	defer t.repl.mu.Unlock()
	labels := map[string]bool{}
	for name, safe := range found {
		t.repl.safe[name] = safe
		label, _, _ := fleets.SplitGroup(name)
		labels[label] = true
	}
	for label := range labels {
		fam, err := t.family(label)
		if err != nil {
			continue
		}
		least := 1.0
		for _, f := range fam.groups {
			if v, ok := t.repl.safe[f.name]; !ok || v < least {
				least = min(least, v) // unchecked: v is 0
			}
		}
		t.metrics.ReplicationSafe.WithLabelValues(label).Set(least)
	}
}
