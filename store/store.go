package store

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file holds the Store and the key lists its hot scripts reuse. The
// scripts' calls are by concept: admit.go (admissions and releases),
// sync.go (heartbeats, leases, leaving and reaping), registry.go (the pod
// registry), summary.go and snapshot.go (what the scaler and operators
// read), scaler.go (the scaler's own records), keys.go (every key's name).

// Store runs the fleet scripts against Redis. It holds no state of its own
// and is safe for concurrent use.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	// keys caches the key lists of the hot scripts per fleet and instance:
	// they are the same for every call (read-only once built).
	keysMu *sync.RWMutex
	keys   map[hotID]*hotKeys
	// runCheck is "1" when the scripts compare Redis' run_id with the
	// epoch's, to catch a restart with old data (PROTOCOL.md, "Epochs").
	runCheck string
	// cacheRun: the hot scripts take the run_id from their text loaded
	// for the running process, not from INFO (runid.go).
	cacheRun bool
	// waitReplicas > 0: an admit call counts only once that many replicas
	// acknowledged it within waitTimeout (WithWait, replication.go).
	waitReplicas int
	waitTimeout  time.Duration
	// topology: how rdb reaches Redis, when WithTopology said so.
	topology Topology
}

// NewStore returns a Store on rdb whose keys start with {prefix:<fleet>}
// (DefaultPrefix when prefix is empty).
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Store{rdb: rdb, prefix: prefix, runCheck: "1", cacheRun: true, keysMu: &sync.RWMutex{}, keys: map[hotID]*hotKeys{}}
}

// WithoutRestartDetection is for servers that do not report a run_id
// (miniredis, in tests and the demo): a restart of such a server with its
// data is not noticed, an empty one still is.
func (s *Store) WithoutRestartDetection() *Store {
	c := *s
	c.runCheck, c.cacheRun = "0", false
	// The cached commands carry the check: the copy builds its own.
	c.keysMu, c.keys = &sync.RWMutex{}, map[hotID]*hotKeys{}
	return &c
}

// WithRunCheckPerCall has every script read Redis' run_id with INFO
// (--redis-run-check=per-call): for a proxy that keeps a client's
// connection while the Redis process behind it changes, where reading the
// run_id and loading a script on one connection does not put them in one
// process (runid.go).
func (s *Store) WithRunCheckPerCall() *Store {
	c := *s
	c.cacheRun = false
	c.keysMu, c.keys = &sync.RWMutex{}, map[hotID]*hotKeys{}
	return &c
}

// hotKeys are the KEYS of the scripts every admission, release and
// heartbeat runs. For admit and release they are the beginnings of their
// EVALSHA commands (name, hash, keys), built once with the arguments that
// never change, so that a call boxes only its own.
type hotKeys struct {
	sync           []string
	admit, release []any // "evalsha", hash, numkeys, keys...
	// channel, run and instance: the events channel, the run id check and
	// the instance id as script arguments.
	channel, run, instance any
	// slotKey is a key of the fleet: the server that holds it runs its
	// scripts. loaded is what loadRun loaded there, if anything.
	slotKey string
	loaded  atomic.Pointer[runScripts]
}

type hotID struct{ fleet, instance string }

func (s *Store) hot(fleet, instance string) *hotKeys {
	id := hotID{fleet, instance}
	s.keysMu.RLock()
	k := s.keys[id]
	s.keysMu.RUnlock()
	if k != nil {
		return k
	}
	fk := s.Keys(fleet)
	k = &hotKeys{
		admit:   evalsha(scriptAdmit, admitKeys(fk, instance)...),
		release: evalsha(scriptRelease, releaseKeys(fk, instance)...),
		sync:    syncKeys(fk, instance),
		channel: fk.Events(), run: s.runCheck, instance: instance,
		slotKey: fk.Epoch(),
	}
	s.keysMu.Lock()
	defer s.keysMu.Unlock()
	if old := s.keys[id]; old != nil {
		return old
	}
	s.keys[id] = k
	return k
}

// Fence says why Redis could not decide an admission (PROTOCOL.md).
type Fence string

const (
	// FenceEpoch: the caller's epoch is not Redis' current one (Redis lost
	// or reloaded its data, or the caller has not synced in it yet).
	FenceEpoch Fence = "epoch"
	// FenceRecovering: after data loss, nothing is granted until every
	// instance has had a lease to re-publish its connections.
	FenceRecovering Fence = "recovering"
	// FenceLease: the caller's lease has ended; it may have been reaped.
	FenceLease Fence = "lease"
)

// ErrEpochFenced is returned by Release when the epoch is not the caller's.
var ErrEpochFenced = errors.New("fenced: not the current epoch")
