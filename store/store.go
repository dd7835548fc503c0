package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsgate/wsgate/fleets"
)

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
}

// NewStore returns a Store on rdb whose keys start with {prefix:<fleet>}.
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	if prefix == "" {
		prefix = "wsgate"
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
	p := s.KeyPrefix(fleet)
	k = &hotKeys{
		admit: evalsha(scriptAdmit, p+"load", p+"avail", p+"inst:"+instance, p+"stats",
			p+"rej:"+string(ReasonCapacity), p+"rej:"+string(ReasonNoPods), p+"rejinst:"+instance,
			p+"epoch", p+"instances", p+"pend:"+instance, p+"seq"),
		release: evalsha(scriptRelease, p+"load", p+"avail", p+"inst:"+instance, p+"stats",
			p+"pend:"+instance, p+"epoch", p+"seq"),
		sync: []string{p + "load", p + "avail", p + "inst:" + instance, p + "pend:" + instance,
			p + "instances", p + "stats", p + "epoch", p + "seq"},
		channel: s.EventsChannel(fleet), run: s.runCheck, instance: instance,
		slotKey: p + "epoch",
	}
	s.keysMu.Lock()
	defer s.keysMu.Unlock()
	if old := s.keys[id]; old != nil {
		return old
	}
	s.keys[id] = k
	return k
}

// Client is the Redis client the store runs on.
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// KeyPrefix is the beginning of every key of fleet: "{wsgate:<fleet>}:".
// The hash tag puts all of them in one Redis Cluster slot.
func (s *Store) KeyPrefix(fleet string) string { return "{" + s.prefix + ":" + fleet + "}:" }

// EventsChannel is where the admit script publishes "active" when a fleet
// gets its first live connection and the reason of the first rejection of
// every bucket; the scaler's StreamIsActive listens here.
func (s *Store) EventsChannel(fleet string) string { return s.KeyPrefix(fleet) + "events" }

func (s *Store) key(fleet, name string) string { return s.KeyPrefix(fleet) + name }

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

// ErrFenced is returned by Release when the epoch is not the caller's.
var ErrFenced = errors.New("fenced: not the current epoch")

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

// Admit places one connection of instance on a pod of fleet under maxPerPod
// as a slot entitled to instance, if instance's epoch and lease are current.
func (s *Store) Admit(ctx context.Context, fleet string, maxPerPod int, policy fleets.Policy, instance, epoch string, now time.Time) (Admission, error) {
	a, err := s.AdmitN(ctx, fleet, maxPerPod, policy, instance, epoch, now, 1)
	if len(a.Pods) == 1 {
		return Admission{Pod: a.Pods[0]}, err
	}
	return Admission{Reason: a.Reason, Fence: a.Fence, Wait: a.Wait}, err
}

// AdmitN places n connections as n admissions in a row would, in one
// script call.
func (s *Store) AdmitN(ctx context.Context, fleet string, maxPerPod int, policy fleets.Policy, instance, epoch string, now time.Time, n int) (Admissions, error) {
	a, _, err := s.AdmitRelease(ctx, fleet, maxPerPod, policy, instance, epoch, now, n, 0)
	return a, err
}

// AdmitRelease is Release(seq, rs...) then AdmitN in one script call, with
// nothing between them. It returns how many of rs the instance held;
// with rs, ErrFenced when the epoch refused them (a.Fence is then
// FenceEpoch).
func (s *Store) AdmitRelease(ctx context.Context, fleet string, maxPerPod int, policy fleets.Policy, instance, epoch string, now time.Time, n int, seq uint64, rs ...ReleaseCount) (Admissions, int, error) {
	hot := s.hot(fleet, instance)
	args := append(make([]any, 0, len(hot.admit)+10+3*len(rs)), hot.admit...)
	args = append(args, maxPerPod, policyArg(policy), Bucket(now), BucketSlots, hot.channel, epoch, hot.run, hot.instance, n)
	if len(rs) == 0 {
		args = append(args, "")
	} else {
		args = append(args, seq)
		for _, r := range rs {
			args = append(args, r.Pod, r.N, r.Pending)
		}
	}
	res, err := s.runHot(ctx, hot, scriptAdmit, args).Slice()
	if err != nil {
		return Admissions{}, 0, fmt.Errorf("admit %s: %w", fleet, err)
	}
	if len(res) < 3 {
		return Admissions{}, 0, fmt.Errorf("admit %s: unexpected reply %v", fleet, res)
	}
	v, _ := res[1].(string)
	granted, _ := res[0].(int64)
	if granted < 0 {
		a := Admissions{Fence: Fence(v), Wait: time.Duration(i64(res[2])) * time.Millisecond}
		released := 0
		if len(res) > 3 {
			released = int(i64(res[3]))
		}
		if released < 0 && len(rs) > 0 {
			return a, 0, fmt.Errorf("release %s: %w", fleet, ErrFenced)
		}
		return a, max(released, 0), nil
	}
	a := Admissions{Reason: Reason(v), Pods: make([]string, 0, granted)}
	for i := 3; i+1 < len(res); i += 2 {
		pod, _ := res[i].(string)
		for range i64(res[i+1]) {
			a.Pods = append(a.Pods, pod)
		}
	}
	if int64(len(a.Pods)) != granted || len(a.Pods) > n {
		return Admissions{}, 0, fmt.Errorf("admit %s: unexpected reply %v", fleet, res)
	}
	return a, int(i64(res[2])), nil
}

// ReleaseCount gives back N connections of one pod, Pending of which were
// never established.
type ReleaseCount struct {
	Pod        string
	N, Pending int
}

// Release gives back the connections of rs that instance holds, in one
// script call, and returns how many it held. They ended when the
// instance's seq was seq, which orders the call after its heartbeats (see
// release.lua).
func (s *Store) Release(ctx context.Context, fleet, instance, epoch string, seq uint64, rs ...ReleaseCount) (int, error) {
	hot := s.hot(fleet, instance)
	args := append(make([]any, 0, len(hot.release)+4+3*len(rs)), hot.release...)
	args = append(args, epoch, hot.run, hot.instance, seq)
	for _, r := range rs {
		args = append(args, r.Pod, r.N, r.Pending)
	}
	got, err := s.runHot(ctx, hot, scriptRelease, args).Int()
	if err != nil {
		return 0, fmt.Errorf("release %s: %w", fleet, err)
	}
	if got < 0 {
		return 0, fmt.Errorf("release %s: %w", fleet, ErrFenced)
	}
	return got, nil
}

// PodCount is one pod's count in a sync: live connections (admitted and not
// yet released) and how many of them Envoy reported established.
type PodCount struct {
	Pod         string
	Live        int
	Established int
}

// RejectionCount is a number of rejections in one bucket, buffered by a
// tracker (rate_limit, redis_down and recovering never reach Redis on their own).
type RejectionCount struct {
	Reason Reason
	Bucket int64
	Count  int64
}

// SyncRequest is one instance's heartbeat for one fleet.
type SyncRequest struct {
	Fleet    string
	Instance string
	// Lease is how long the instance stays alive in Redis (Redis' clock).
	Lease time.Duration
	// RecoveryWait is how long a new epoch grants nothing: the instance TTL.
	RecoveryWait time.Duration
	// Seq orders the instance's heartbeats and releases (see sync.lua).
	Seq uint64
	// Confirm names the epoch whose recovery wait this instance saw pass
	// on its own clock (see sync.lua); empty for none.
	Confirm    string
	Counts     []PodCount
	Rejections []RejectionCount
	// Reap names instances whose seq the caller saw stand still for a lease.
	Reap []string
}

// Lease is another instance as a heartbeat sees it.
type Lease struct {
	// Until is the end of its lease by Redis' clock.
	Until time.Time
	// Seq changes with each of its heartbeats and releases.
	Seq uint64
}

// SyncResult is what the instance learns from a heartbeat: the epoch, the
// live instances and the placeable pods with their load.
type SyncResult struct {
	Epoch        string
	EpochCreated bool
	// Recovering is how long the epoch still grants nothing.
	Recovering time.Duration
	// Instances are the instances Redis holds (this one included).
	Instances map[string]Lease
	Avail     map[string]int
	Reaped    []string
	// Stale: a later heartbeat or release of this instance already ran;
	// nothing done. Seq is the instance's last seq in Redis.
	Stale bool
	Seq   uint64
}

// Sync replaces the instance's counts with req.Counts and flushes its
// buffered rejections (see sync.lua).
func (s *Store) Sync(ctx context.Context, req SyncRequest) (SyncResult, error) {
	p := s.KeyPrefix(req.Fleet)
	keys := s.hot(req.Fleet, req.Instance).sync
	args := []any{req.Instance, req.Lease.Milliseconds(), newEpoch(), p,
		BucketSlots, s.EventsChannel(req.Fleet), s.runCheck, req.Seq, req.RecoveryWait.Milliseconds(), req.Confirm, len(req.Counts)}
	for _, c := range req.Counts {
		args = append(args, c.Pod, c.Live, c.Established)
	}
	args = append(args, len(req.Rejections))
	for _, r := range req.Rejections {
		args = append(args, string(r.Reason), r.Bucket, r.Count)
	}
	args = append(args, len(req.Reap))
	for _, id := range req.Reap {
		args = append(args, id)
	}
	res, err := scriptSync.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return SyncResult{}, fmt.Errorf("sync %s: %w", req.Fleet, err)
	}
	if len(res) != 8 {
		return SyncResult{}, fmt.Errorf("sync %s: unexpected reply of %d elements", req.Fleet, len(res))
	}
	out := SyncResult{Avail: map[string]int{}, Instances: map[string]Lease{}}
	out.Epoch, _ = res[0].(string)
	out.EpochCreated = i64(res[1]) == 1
	out.Recovering = time.Duration(i64(res[2])) * time.Millisecond
	inst := strs(res[3])
	for i := 0; i+2 < len(inst); i += 3 {
		ms, _ := strconv.ParseFloat(inst[i+1], 64)
		seq, _ := strconv.ParseUint(inst[i+2], 10, 64)
		out.Instances[inst[i]] = Lease{Until: time.UnixMilli(int64(ms)), Seq: seq}
	}
	pairs := strs(res[4])
	for i := 0; i+1 < len(pairs); i += 2 {
		n, _ := strconv.ParseFloat(pairs[i+1], 64)
		out.Avail[pairs[i]] = int(n)
	}
	out.Reaped = strs(res[5])
	out.Stale = i64(res[6]) == 1
	out.Seq, _ = strconv.ParseUint(fmt.Sprint(res[7]), 10, 64)
	return out, nil
}

// Resume reads what Redis holds for instance (pod -> connections: what a
// previous run of it left) and starts a new run of it: the first seq of the
// run is above every seq an earlier run can have sent, even one still
// waiting in Redis' input buffer (a generation counter in the high bits).
func (s *Store) Resume(ctx context.Context, fleet, instance string) (map[string]int, uint64, error) {
	m, err := s.rdb.HGetAll(ctx, s.key(fleet, "inst:"+instance)).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("resume %s %s: %w", fleet, instance, err)
	}
	gen, err := s.rdb.HIncrBy(ctx, s.key(fleet, "gen"), instance, 1).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("resume %s %s: %w", fleet, instance, err)
	}
	out := make(map[string]int, len(m))
	for pod, v := range m {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			out[pod] = n
		}
	}
	return out, uint64(gen) << seqGenShift, nil
}

// seqGenShift leaves 2^32 calls to a run and 2^21 runs to an instance id
// within Lua's exact integers (2^53).
const seqGenShift = 32

// Recovery is how long fleet's epoch still grants nothing (see
// FenceRecovering), by Redis' clock: 0 once it grants. It is at least a
// millisecond while there is no epoch, while the epoch was made by another
// Redis process (a restart: the next heartbeat opens a new one), and while
// no tracker has confirmed the wait on its own clock.
func (s *Store) Recovery(ctx context.Context, fleet string) (time.Duration, error) {
	ms, err := scriptRecovery.Run(ctx, s.rdb, []string{s.key(fleet, "epoch")}, s.runCheck).Int64()
	if err != nil {
		return 0, fmt.Errorf("recovery %s: %w", fleet, err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// AwaitRecovery returns once fleet's epoch grants (Recovery is 0), or with
// ctx's error. Trackers must heartbeat meanwhile: one of them confirms the
// wait. Redis' clock gives no event to wait for: it polls.
func (s *Store) AwaitRecovery(ctx context.Context, fleet string) error {
	for {
		left, err := s.Recovery(ctx, fleet)
		if err != nil || left == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("recovery %s: %w", fleet, ctx.Err())
		case <-time.After(min(left, 50*time.Millisecond)):
		}
	}
}

// Instances reads the instances of fleet and their seq, for a reaper's
// watch (see Stalled).
func (s *Store) Instances(ctx context.Context, fleet string) (map[string]uint64, error) {
	ids, err := s.rdb.ZRange(ctx, s.key(fleet, "instances"), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("instances %s: %w", fleet, err)
	}
	seqs, err := s.rdb.HGetAll(ctx, s.key(fleet, "seq")).Result()
	if err != nil {
		return nil, fmt.Errorf("instances %s: %w", fleet, err)
	}
	out := make(map[string]uint64, len(ids))
	for _, id := range ids {
		n, _ := strconv.ParseUint(seqs[id], 10, 64)
		out[id] = n
	}
	return out, nil
}

// Reap removes the instances of fleet among ids (ones the caller saw stand
// still for a lease) whose lease has also ended by Redis' clock, and
// returns those it removed.
func (s *Store) Reap(ctx context.Context, fleet string, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := []any{s.KeyPrefix(fleet)}
	for _, id := range ids {
		args = append(args, id)
	}
	res, err := scriptReap.Run(ctx, s.rdb, []string{s.key(fleet, "instances")}, args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("reap %s: %w", fleet, err)
	}
	return strs(res), nil
}

// Leave removes instance from fleet at once, with whatever Redis counts for
// it: only for an instance whose Envoy carries none of those connections any
// more (it drained, or Envoy is gone). It reports whether the instance was
// there. seq is above every call the instance made before: a late one is
// then ignored.
func (s *Store) Leave(ctx context.Context, fleet, instance string, seq uint64) (bool, error) {
	n, err := scriptLeave.Run(ctx, s.rdb, []string{s.key(fleet, "instances")}, s.KeyPrefix(fleet), instance, seq).Int()
	if err != nil {
		return false, fmt.Errorf("leave %s: %w", fleet, err)
	}
	return n == 1, nil
}

// SetPods replaces the pod registry of fleet. Writing the same list twice
// changes nothing, so several writers may run.
func (s *Store) SetPods(ctx context.Context, fleet string, pods []fleets.Pod) error {
	p := s.KeyPrefix(fleet)
	args := []any{len(pods)}
	for _, pod := range pods {
		if err := fleets.ValidatePodAddr(pod.Addr); err != nil {
			return fmt.Errorf("set pods %s: %w", fleet, err)
		}
		doc, err := json.Marshal(pod)
		if err != nil {
			return fmt.Errorf("set pods %s: %w", fleet, err)
		}
		args = append(args, pod.Addr, doc, boolArg(pod.Ready), boolArg(pod.Draining))
	}
	if err := scriptSetPods.Run(ctx, s.rdb, []string{p + "pods", p + "avail", p + "load", p + "stats"}, args...).Err(); err != nil {
		return fmt.Errorf("set pods %s: %w", fleet, err)
	}
	return nil
}

// Summary is what the scaler decides on, read in one round trip whatever
// the number of pods.
type Summary struct {
	Fleet string
	// Live is the number of live connections, all pods and instances.
	Live int64
	// Pods, Ready, Draining count the registry: Ready includes Draining.
	Pods, Ready, Draining int64
	// Placeable is the number of ready, non-draining pods.
	Placeable int64
	// Epoch identifies the current Redis lifetime ("" when none yet).
	Epoch string
	// Synced is how many instances re-published their state in Epoch.
	Synced int64
	// Alive is how many instances hold an unexpired lease.
	Alive int64
	// Left counts the instances that left on their own in this epoch (a
	// drained Envoy pod): a drop of Alive they explain lost no count.
	Left       int64
	Rejections map[Reason]Windows
	// RedisNow is Redis' clock when the summary was read.
	RedisNow time.Time
}

// EpochStart is when the current epoch began by Redis' clock (zero when
// unknown): compare it with RedisNow, not with another host's clock.
func (s Summary) EpochStart() time.Time { return epochStart(s.Epoch) }

// Known reports whether Redis holds anything of the fleet.
func (s Summary) Known() bool { return s.Epoch != "" || s.Pods > 0 || s.Alive > 0 }

// Summary reads the fleet's Summary as of now.
func (s *Store) Summary(ctx context.Context, fleet string, now time.Time) (Summary, error) {
	p := s.KeyPrefix(fleet)
	keys := []string{p + "stats", p + "avail", p + "epoch", p + "instances"}
	for _, r := range Reasons {
		keys = append(keys, p+"rej:"+string(r))
	}
	res, err := scriptSummary.Run(ctx, s.rdb, keys, p, now.UnixMilli(), Bucket(now),
		windowBuckets(Window5m), windowBuckets(Window15m), windowBuckets(Window1h)).Slice()
	if err != nil {
		return Summary{}, fmt.Errorf("summary %s: %w", fleet, err)
	}
	if len(res) != 10+3*len(Reasons) {
		return Summary{}, fmt.Errorf("summary %s: unexpected reply of %d elements", fleet, len(res))
	}
	out := Summary{Fleet: fleet, Rejections: map[Reason]Windows{}}
	out.Live, out.Pods, out.Ready, out.Draining, out.Placeable = i64(res[0]), i64(res[1]), i64(res[2]), i64(res[3]), i64(res[4])
	out.Epoch, _ = res[5].(string)
	out.Synced, out.Alive = i64(res[6]), i64(res[7])
	out.RedisNow = time.UnixMilli(i64(res[8+3*len(Reasons)]))
	out.Left = i64(res[9+3*len(Reasons)])
	for k, r := range Reasons {
		b := 8 + 3*k
		out.Rejections[r] = Windows{M5: i64(res[b]), M15: i64(res[b+1]), H1: i64(res[b+2])}
	}
	return out, nil
}

// InstanceState is one tracker instance as Redis knows it.
type InstanceState struct {
	ID         string
	LeaseUntil time.Time
	Live       map[string]int // pod -> connections
	// Established is pod -> established connections: those the instance
	// counted established at its last heartbeat, and those it admitted since.
	Established map[string]int
	Rejections  map[Reason]Windows
}

// Snapshot is the whole state of one fleet, for operators.
type Snapshot struct {
	Fleet      string
	Pods       map[string]fleets.Pod // address -> registry entry
	Load       map[string]int        // address -> live connections, all instances (avail and load together)
	Live       int64
	Epoch      string
	Synced     []string
	Instances  []InstanceState // sorted by id
	Rejections map[Reason]Windows
	// RedisNow is Redis' clock when the snapshot was read: leases are
	// judged by it.
	RedisNow time.Time
	// RecoveryUntil is the end of the epoch's recovery wait (its `until`,
	// Redis' clock): before it, the admit script grants nothing. Zero when
	// there is no epoch.
	RecoveryUntil time.Time
	// RecoveryConfirmed: a tracker confirmed the recovery wait on its own
	// clock (its `confirmed`); until then the admit script grants nothing
	// either, whatever Redis' clock says.
	RecoveryConfirmed bool
}

// Known reports whether Redis holds anything of the fleet.
func (s Snapshot) Known() bool { return s.Epoch != "" || len(s.Pods) > 0 || len(s.Instances) > 0 }

// Snapshot reads everything of fleet in one round trip (snapshot.lua).
func (s *Store) Snapshot(ctx context.Context, fleet string, now time.Time) (Snapshot, error) {
	p := s.KeyPrefix(fleet)
	keys := []string{p + "pods", p + "load", p + "instances", p + "stats", p + "epoch", p + "avail"}
	args := []any{p, Bucket(now), windowBuckets(Window5m), windowBuckets(Window15m), windowBuckets(Window1h)}
	for _, r := range Reasons {
		args = append(args, string(r))
	}
	res, err := scriptSnapshot.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", fleet, err)
	}
	if len(res) != 11 {
		return Snapshot{}, fmt.Errorf("snapshot %s: unexpected reply of %d elements", fleet, len(res))
	}
	out := Snapshot{Fleet: fleet, Pods: map[string]fleets.Pod{}}
	pods := pairs(res[0])
	for addr, doc := range pods {
		var pod fleets.Pod
		if err := json.Unmarshal([]byte(doc), &pod); err != nil {
			return Snapshot{}, fmt.Errorf("snapshot %s: pod %s: %w", fleet, addr, err)
		}
		pod.Addr = addr
		out.Pods[addr] = pod
	}
	out.Load = counts(res[1]) // pods that are not placeable
	for pod, n := range counts(res[3]) {
		out.Load[pod] = n // placeable pods: their counts live in avail
	}
	if v, err := strconv.ParseInt(pairs(res[2])["live"], 10, 64); err == nil {
		out.Live = v
	}
	out.Epoch, _ = res[4].(string)
	out.Synced = strs(res[5])
	sort.Strings(out.Synced)
	insts, _ := res[6].([]any)
	for _, v := range insts {
		f, _ := v.([]any)
		if len(f) != 5 {
			return Snapshot{}, fmt.Errorf("snapshot %s: malformed instance entry", fleet)
		}
		id, _ := f[0].(string)
		lease, _ := strconv.ParseFloat(fmt.Sprint(f[1]), 64)
		in := InstanceState{ID: id, LeaseUntil: time.UnixMilli(int64(lease)), Live: counts(f[2]), Established: map[string]int{}, Rejections: windows(f[4])}
		pending := counts(f[3])
		for pod, n := range in.Live {
			if e := n - pending[pod]; e > 0 {
				in.Established[pod] = e
			}
		}
		out.Instances = append(out.Instances, in)
	}
	sort.Slice(out.Instances, func(i, j int) bool { return out.Instances[i].ID < out.Instances[j].ID })
	out.Rejections = windows(res[7])
	out.RedisNow = time.UnixMilli(i64(res[8]))
	if ms := i64(res[9]); ms > 0 {
		out.RecoveryUntil = time.UnixMilli(ms)
	}
	out.RecoveryConfirmed = i64(res[10]) == 1
	return out, nil
}

// newEpoch is the random part of a new epoch's id; sync.lua puts Redis'
// clock before it, so the id tells when the epoch began by that clock.
func newEpoch() string { return randomHex(4) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

func epochStart(epoch string) time.Time {
	var ms int64
	if _, err := fmt.Sscanf(epoch, "%d-", &ms); err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func boolArg(b bool) int {
	if b {
		return 1
	}
	return 0
}

func i64(v any) int64 {
	n, _ := v.(int64)
	return n
}

func strs(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, e := range l {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func pairs(v any) map[string]string {
	l := strs(v)
	out := make(map[string]string, len(l)/2)
	for i := 0; i+1 < len(l); i += 2 {
		out[l[i]] = l[i+1]
	}
	return out
}

func counts(v any) map[string]int {
	out := map[string]int{}
	for k, s := range pairs(v) {
		n, err := strconv.ParseFloat(s, 64)
		if err == nil && n > 0 {
			out[k] = int(n)
		}
	}
	return out
}

// windows decodes a flat (reason, 5m, 15m, 1h, ...) list.
func windows(v any) map[Reason]Windows {
	l, _ := v.([]any)
	out := map[Reason]Windows{}
	for i := 0; i+3 < len(l); i += 4 {
		r, _ := l[i].(string)
		out[Reason(r)] = Windows{M5: i64(l[i+1]), M15: i64(l[i+2]), H1: i64(l[i+3])}
	}
	return out
}
