// Package tracker keeps the shared, exact view of WebSocket connections per
// backend pod that wsgate's Envoy fleet admits against.
//
// State lives in Redis, counted rather than listed (README: State in Redis):
// one counter per (tracker instance, pod), summed per pod in a sorted set that
// admission picks from in O(log pods). All keys of a fleet share one hash tag,
// so every script is atomic on one node, also on Redis Cluster.
//
// A store.Store runs the scripts; a Tracker is one Envoy sidecar's side of it: the
// connections it admitted (its local truth), the per-fleet token bucket, the
// heartbeat that re-publishes the local truth, and the fallback used while
// Redis cannot decide. PROTOCOL.md argues why no pod exceeds its cap under
// any fault: a slot Redis counts for an instance is its entitlement, every
// script fences on the epoch, leases run on Redis' clock.
//
// The package by concept: tracker.go (Tracker, New, the fleets), config.go
// (Config), fleet.go (a fleet's state, its *Locked invariants and the lock
// order), admit.go (Admit: token bucket, reuse, the admit script, the
// fallback), release.go (Release and the release calls), batch.go (the
// batchers that share script calls), conn.go (a connection's life: record,
// Establish, Renew, Adopt, expire), heartbeat.go (Run, Heartbeat and sync),
// health.go (degraded and fenced), drain.go (Drain, Leave), apply.go
// (configuration changes), http.go, status.go, collector.go and metrics.go
// (what it serves and exports).
package tracker
