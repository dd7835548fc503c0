package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is what a replicated Redis needs of the store (PROTOCOL.md,
// "Replication and failover"): admissions that count only once the
// replicas have them (WAIT on the admit call's connection), and the check
// of whether the Redis a fleet lives on can keep the cap under split brain.

// ErrNotReplicated: the admit call ran, but WAIT did not report it
// acknowledged by the replicas the Store waits for (WithWait) in time. Its
// grants must not be used: a replica promoted now may lack them. Redis
// counts them until the instance's next heartbeat publishes the truth,
// as for a reply that was lost.
var ErrNotReplicated = errors.New("not acknowledged by the replicas in time")

// WithWait has every admit call count only once replicas replicas
// acknowledged it (Redis WAIT replicas timeout, sent after the script on
// the same connection): otherwise Admit returns ErrNotReplicated. 0: no
// WAIT. Releases and heartbeats send none: they only lower what Redis
// counts, and a promoted replica that lacks one over-counts, which the
// next heartbeat corrects (PROTOCOL.md).
func (s *Store) WithWait(replicas int, timeout time.Duration) *Store {
	c := *s
	c.waitReplicas, c.waitTimeout = replicas, timeout
	return &c
}

// runHotWait is runHot for a Store WithWait: the script call and WAIT go
// in one pipeline, so on one connection, of the one server that holds the
// fleet's keys (for a Cluster, the primary of its slot, as loadRun): WAIT
// counts the replicas that have every write of its connection, so it must
// follow the script on the connection that ran it. It returns the script's
// command, and WAIT's (nil when the pipeline was never sent).
func (s *Store) runHotWait(ctx context.Context, hot *hotKeys, sc *redis.Script, args []any) (*redis.Cmd, *redis.IntCmd) {
	node, err := nodeOf(ctx, s.rdb, hot.slotKey)
	if err != nil {
		cmd := redis.NewCmd(ctx, args...)
		cmd.SetErr(fmt.Errorf("the server of the fleet's keys: %w", err))
		return cmd, nil
	}
	if s.cacheRun {
		// As runLoaded: the text loaded for the running process, loaded
		// first (again after a NOSCRIPT, once).
		for range 2 {
			f := hot.loaded.Load()
			if f == nil {
				if f, err = s.loadRun(ctx, hot); err != nil {
					cmd := redis.NewCmd(ctx, args...)
					cmd.SetErr(err)
					return cmd, nil
				}
			}
			if f.run == "" {
				break
			}
			args[1] = f.hash(sc)
			cmd, wait := s.pipeWait(ctx, node, args)
			if !noScript(cmd.Err()) {
				return cmd, wait
			}
			hot.loaded.CompareAndSwap(f, nil)
		}
		args[1] = sc.Hash()
	}
	cmd, wait := s.pipeWait(ctx, node, args)
	if noScript(cmd.Err()) {
		if s.cacheRun {
			hot.loaded.Store(nil)
		}
		cmd, wait = s.pipeWait(ctx, node, append([]any{"eval", text(sc)}, args[2:]...))
	}
	return cmd, wait
}

// pipeWait sends args then WAIT in one pipeline on node, once (no retry:
// see runHot). A Cluster node that no longer holds the slot answers MOVED
// (the script did not run): the cluster's map is read again for the next
// call.
func (s *Store) pipeWait(ctx context.Context, node *redis.Client, args []any) (*redis.Cmd, *redis.IntCmd) {
	cmd := redis.NewCmd(ctx, args...)
	wait := redis.NewIntCmd(ctx, "wait", s.waitReplicas, s.waitTimeout.Milliseconds())
	pipe := node.Pipeline()
	_ = pipe.Process(ctx, noRetry{cmd})
	_ = pipe.Process(ctx, wait)
	_, _ = pipe.Exec(ctx)
	if c, ok := s.rdb.(*redis.ClusterClient); ok && cmd.Err() != nil {
		if msg := cmd.Err().Error(); strings.HasPrefix(msg, "MOVED ") || strings.HasPrefix(msg, "ASK ") {
			c.ReloadState(ctx)
		}
	}
	return cmd, wait
}

// acked checks WAIT's answer to an admit call that ran: the number of
// replicas that acknowledged it must be at least the Store's.
func (s *Store) acked(fleet string, wait *redis.IntCmd) error {
	if wait == nil {
		return fmt.Errorf("admit %s: %w: WAIT was not sent", fleet, ErrNotReplicated)
	}
	n, err := wait.Result()
	if err != nil {
		// Not %w: the script ran, whatever WAIT's error says (a Redis
		// error must not read as a call that never ran).
		return fmt.Errorf("admit %s: %w: WAIT %d %d: %s", fleet, ErrNotReplicated, s.waitReplicas, s.waitTimeout.Milliseconds(), err.Error())
	}
	if n < int64(s.waitReplicas) {
		return fmt.Errorf("admit %s: %w: %d of %d replicas acknowledged within %s", fleet, ErrNotReplicated, n, s.waitReplicas, s.waitTimeout)
	}
	return nil
}

// Topology is how the clients reach Redis: one server, a primary that
// Sentinel names, or a Cluster.
type Topology string

const (
	TopologySingle   Topology = "single"
	TopologySentinel Topology = "sentinel"
	TopologyCluster  Topology = "cluster"
)

// Topology is how c reaches Redis.
func (c RedisConfig) Topology() Topology {
	switch {
	case c.MasterName != "":
		return TopologySentinel
	case c.Cluster || len(c.Addrs) > 1:
		return TopologyCluster
	}
	return TopologySingle
}

// WithTopology records how the Store's client reaches Redis, for the
// replication check: a Sentinel client is a *redis.Client, as one server's.
func (s *Store) WithTopology(t Topology) *Store {
	c := *s
	c.topology = t
	return &c
}

// Topology is how the Store's client reaches Redis: as WithTopology said,
// else a Cluster for a Cluster client and one server for any other.
func (s *Store) Topology() Topology {
	if s.topology != "" {
		return s.topology
	}
	if _, ok := s.rdb.(*redis.ClusterClient); ok {
		return TopologyCluster
	}
	return TopologySingle
}

// Replication is what the server of a fleet's keys says of its replication.
type Replication struct {
	// Addr is the server asked, as the client knows it.
	Addr string
	// Role is INFO replication's role: master, or slave.
	Role string
	// Replicas is connected_slaves: the replicas connected now (one that
	// is down or cut off is not counted, yet may be promoted later).
	Replicas int
	// MinReplicasToWrite and MinReplicasMaxLag are the write lease (CONFIG
	// GET), when ConfigRead. ConfigErr says why they could not be read
	// (the ACL refused CONFIG: NOPERM), which is no error of the check.
	MinReplicasToWrite, MinReplicasMaxLag int
	ConfigRead                            bool
	ConfigErr                             string
}

// Replication reads INFO replication from the server of fleet's keys, and
// the write lease with CONFIG GET where the ACL allows it.
func (s *Store) Replication(ctx context.Context, fleet string) (Replication, error) {
	node, err := nodeOf(ctx, s.rdb, s.Keys(fleet).Epoch())
	if err != nil {
		return Replication{}, fmt.Errorf("replication of %s: the server of the fleet's keys: %w", fleet, err)
	}
	r := Replication{Addr: node.Options().Addr}
	if s.Topology() == TopologySentinel {
		// go-redis names a Sentinel client's connections "FailoverClient":
		// the address is whichever primary the Sentinels name now.
		r.Addr = "the primary the Sentinels name"
	}
	info, err := node.Info(ctx, "replication").Result()
	if err != nil {
		return r, fmt.Errorf("replication of %s: INFO replication: %w", fleet, err)
	}
	for _, line := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch k {
		case "role":
			r.Role = v
		case "connected_slaves":
			r.Replicas, _ = strconv.Atoi(v)
		}
	}
	if r.Role == "" {
		return r, fmt.Errorf("replication of %s: INFO replication without a role: %q", fleet, info)
	}
	cfg, err := node.ConfigGet(ctx, "min-replicas-*").Result()
	var rerr redis.Error
	switch {
	case err == nil:
		r.ConfigRead = true
		r.MinReplicasToWrite, _ = strconv.Atoi(cfg["min-replicas-to-write"])
		r.MinReplicasMaxLag, _ = strconv.Atoi(cfg["min-replicas-max-lag"])
	case errors.As(err, &rerr):
		// NOPERM (the ACL README documents leaves CONFIG out), or a
		// managed Redis that renames CONFIG: not the check's failure.
		r.ConfigErr = err.Error()
	default:
		return r, fmt.Errorf("replication of %s: CONFIG GET: %w", fleet, err)
	}
	return r, nil
}

// SplitBrainSetup is what, besides Redis, decides whether the cap holds
// under split brain: how Redis is reached, the admissions' WAIT, and
// whether expired instances are reaped.
type SplitBrainSetup struct {
	Topology     Topology
	WaitReplicas int
	Reap         bool
}

// SplitBrainRisks says why r, reached as setup says, cannot keep the cap
// under split brain (an old primary that keeps serving while a replica is
// promoted), each with the flag or setting that fixes it; none when it
// can (PROTOCOL.md, "Replication and failover").
func (r Replication) SplitBrainRisks(setup SplitBrainSetup) []string {
	var risks []string
	failover := r.Replicas > 0 || setup.Topology != TopologySingle
	if !failover {
		return nil
	}
	where := fmt.Sprintf("%s has %d connected replicas", r.Addr, r.Replicas)
	if setup.Topology != TopologySingle {
		where = fmt.Sprintf("%s (%s) has %d connected replicas", r.Addr, setup.Topology, r.Replicas)
	}
	switch {
	case setup.WaitReplicas == 0:
		fix := "set --redis-wait-replicas to the number of replicas of the primary (" + strconv.Itoa(max(r.Replicas, 1)) + ")"
		if r.Replicas == 0 {
			// None connected is not none: a replica whose link is down
			// may still be promoted.
			fix = "set --redis-wait-replicas to the number of replicas each primary has; if it really has none, nothing can fail over, and --redis-replication-check=warn lets the tracker start"
		}
		risks = append(risks, where+" and admissions do not wait for them: a replica promoted while the old primary still serves lacks what it granted, and a pod can reach twice its cap; "+fix)
	case setup.WaitReplicas < r.Replicas:
		risks = append(risks, fmt.Sprintf("%s but admissions wait for %d only: WAIT cannot choose which replica acknowledges, nor Sentinel or the Cluster which one is promoted; set --redis-wait-replicas %d (every replica)", where, setup.WaitReplicas, r.Replicas))
	}
	if setup.Reap {
		risks = append(risks, where+" and expired instances are reaped: under split brain the promoted replica reaps the instances cut off from it while they still hold connections, and no Redis setting prevents it; set expiredInstances: keep or kube in the fleets file")
	}
	return risks
}

// SplitBrainNotes are what r, reached as setup says, costs the admissions
// without putting the cap at risk: fewer replicas connected than
// admissions wait for (every admission through Redis fails until they
// are back).
func (r Replication) SplitBrainNotes(setup SplitBrainSetup) []string {
	var notes []string
	if r.Role != "" && r.Role != "master" {
		notes = append(notes, fmt.Sprintf("%s is a replica (role %s): it refuses writes; point --redis-addr at the primary, or use Sentinel (--redis-master-name)", r.Addr, r.Role))
	}
	if setup.WaitReplicas > 0 && r.Replicas < setup.WaitReplicas {
		notes = append(notes, fmt.Sprintf("admissions wait for %d replicas but %s has %d connected: every admission through Redis is refused to the fallback until they are back", setup.WaitReplicas, r.Addr, r.Replicas))
	}
	return notes
}
