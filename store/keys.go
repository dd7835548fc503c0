package store

// This file names every Redis key and channel of wsgate's schema (README.md,
// "Redis keys"). Go code builds key names only here; the scripts build the
// few they cannot be passed (other instances' keys, the epoch's synced set,
// the rejection rings a heartbeat flushes) from the fleet's prefix and the
// same suffixes (keys_test.go checks the scripts spell no other).

// The suffixes of a fleet's keys, after its prefix "{<prefix>:<fleet>}:".
const (
	keyPods      = "pods"       // hash: pod address -> registry JSON
	keyLoad      = "load"       // zset: live connections of the pods not placeable
	keyAvail     = "avail"      // zset: live connections of the placeable pods
	keyInst      = "inst:"      // + instance: hash pod -> slots of the instance
	keyPend      = "pend:"      // + instance: hash pod -> slots not yet established
	keyInstances = "instances"  // zset: instance -> lease end (ms, Redis' clock)
	keySeq       = "seq"        // hash: instance -> its last heartbeat's seq
	keyGen       = "gen"        // hash: instance -> runs of its tracker so far
	keyRej       = "rej:"       // + reason: the fleet's rejection ring
	keyRejInst   = "rejinst:"   // + instance: its rejection rings, one per reason
	keyStats     = "stats"      // hash: pods, ready, draining, left (live: versions before issue 27 only)
	keyEpoch     = "epoch"      // hash: id, run, created, until, confirmed, open, repl, waited, early, i:<id> and h:<id> per instance
	keySynced    = "synced:"    // + epoch: set of the instances synced in it
	keyRepublish = "republish:" // + epoch: hash of the instances its early end waits for
	keyEvents    = "events"     // pub/sub channel: "active" and rejection reasons
	keyScaler    = "scaler:"    // + trigger: one scaler trigger's decision hash
	keyScalers   = "scalers"    // zset: trigger -> updatedMs of its decision
	keyScaleDown = "scaledown"  // zset: scale-down candidates, first to go first
	keyLayout    = "layout"     // hash: shards (a fleet's groups), in group 0's tag and mirrored in group 1's
	// keyLegacyScaler is the one decision hash of versions before one per
	// trigger: the scaler deletes it.
	keyLegacyScaler = "scaler"
)

// keyNames are the suffixes above, for the test that no other package
// spells them.
var keyNames = []string{keyPods, keyLoad, keyAvail, keyInst, keyPend, keyInstances, keySeq, keyGen,
	keyRej, keyRejInst, keyStats, keyEpoch, keySynced, keyRepublish, keyEvents, keyScaler, keyScalers, keyScaleDown,
	keyLegacyScaler, keyLayout}

// DefaultPrefix is the key prefix of a Store made with an empty one.
const DefaultPrefix = "wsgate"

// Keys names the keys of one fleet. They all start with the fleet's hash
// tag, so they live in one Redis Cluster slot and every script runs on one
// node. Tests that inspect Redis directly name keys with it too.
type Keys struct{ prefix string }

// FleetKeys are the keys of fleet under prefix ("" is DefaultPrefix), for
// tests that look at Redis without a Store.
func FleetKeys(prefix, fleet string) Keys {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Keys{prefix: "{" + prefix + ":" + fleet + "}:"}
}

// Keys are the keys of fleet.
func (s *Store) Keys(fleet string) Keys { return FleetKeys(s.prefix, fleet) }

// Prefix is the beginning of every key of the fleet: "{<prefix>:<fleet>}:".
func (k Keys) Prefix() string { return k.prefix }

// Pods is the pod registry: address -> the pod's JSON (fleets.Pod).
func (k Keys) Pods() string { return k.prefix + keyPods }

// Load holds the live connections of the pods that are not placeable.
func (k Keys) Load() string { return k.prefix + keyLoad }

// Avail holds the live connections of the placeable pods.
func (k Keys) Avail() string { return k.prefix + keyAvail }

// Inst is instance's entitlement: pod -> slots.
func (k Keys) Inst(instance string) string { return k.prefix + keyInst + instance }

// Pend is the part of instance's slots not established at its last heartbeat.
func (k Keys) Pend(instance string) string { return k.prefix + keyPend + instance }

// Instances holds every instance's lease end by Redis' clock.
func (k Keys) Instances() string { return k.prefix + keyInstances }

// Seq holds every instance's last heartbeat's seq.
func (k Keys) Seq() string { return k.prefix + keySeq }

// Gen counts the runs of every instance's tracker.
func (k Keys) Gen() string { return k.prefix + keyGen }

// Rej is the fleet's rejection ring of reason.
func (k Keys) Rej(r Reason) string { return k.prefix + keyRej + string(r) }

// RejInst holds instance's rejection rings.
func (k Keys) RejInst(instance string) string { return k.prefix + keyRejInst + instance }

// Stats holds the fleet's counters: live, pods, ready, draining, left.
func (k Keys) Stats() string { return k.prefix + keyStats }

// Epoch is the current epoch's hash.
func (k Keys) Epoch() string { return k.prefix + keyEpoch }

// Synced is the set of the instances that synced in epoch.
func (k Keys) Synced(epoch string) string { return k.prefix + keySynced + epoch }

// Republish is the set of the instances that must still heartbeat in epoch
// before its recovery wait ends early (sync.lua; PROTOCOL.md, "Ending the
// wait early after a failover").
func (k Keys) Republish(epoch string) string { return k.prefix + keyRepublish + epoch }

// Events is the fleet's pub/sub channel: the sync script publishes
// "active" when an instance's live connections rise from 0 (the heartbeat
// that publishes them, not the admission), and the admit script the
// reason of the first rejection of every bucket.
func (k Keys) Events() string { return k.prefix + keyEvents }

// Scaler is trigger's decision hash, written by the scaler.
func (k Keys) Scaler(trigger string) string { return k.prefix + keyScaler + trigger }

// Scalers indexes the triggers' decisions: trigger -> updatedMs.
func (k Keys) Scalers() string { return k.prefix + keyScalers }

// ScaleDown is the scaler's scale-down order: pod address -> position.
func (k Keys) ScaleDown() string { return k.prefix + keyScaleDown }

// Layout is the number of groups a fleet's pods are split into (its
// shards), recorded by the first tracker to heartbeat it; only group 0's
// (the fleet's own name's) is used (store/shards.go).
func (k Keys) Layout() string { return k.prefix + keyLayout }

// LegacyScaler is the one decision hash of earlier versions.
func (k Keys) LegacyScaler() string { return k.prefix + keyLegacyScaler }
