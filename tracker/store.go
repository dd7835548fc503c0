package tracker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Store runs the fleet scripts against Redis. It holds no state of its own
// and is safe for concurrent use.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
}

// NewStore returns a Store on rdb whose keys start with {prefix:<fleet>}.
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	if prefix == "" {
		prefix = "wsgate"
	}
	return &Store{rdb: rdb, prefix: prefix}
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

// Admission is what the admit script decided.
type Admission struct {
	Pod    string // set when admitted
	Reason Reason // set when rejected
}

// Admit places one connection of instance on a pod of fleet under maxPerPod
// and counts it for instance. It does not renew the instance's lease: the
// caller admits through Redis only between successful heartbeats.
func (s *Store) Admit(ctx context.Context, fleet string, maxPerPod int, policy Policy, instance string, now time.Time) (Admission, error) {
	p := s.KeyPrefix(fleet)
	keys := []string{p + "load", p + "avail", p + "inst:" + instance, p + "pend:" + instance, p + "stats",
		p + "rej:" + string(ReasonCapacity), p + "rej:" + string(ReasonNoPods), p + "rejinst:" + instance}
	res, err := scriptAdmit.Run(ctx, s.rdb, keys, maxPerPod, string(policy), Bucket(now), BucketSlots, s.EventsChannel(fleet)).Slice()
	if err != nil {
		return Admission{}, fmt.Errorf("admit %s: %w", fleet, err)
	}
	if len(res) != 2 {
		return Admission{}, fmt.Errorf("admit %s: unexpected reply %v", fleet, res)
	}
	v, _ := res[1].(string)
	if n, _ := res[0].(int64); n == 1 {
		return Admission{Pod: v}, nil
	}
	return Admission{Reason: Reason(v)}, nil
}

// Release gives back up to n connections that instance holds on pod, of
// which pending were never established, and returns how many it held.
func (s *Store) Release(ctx context.Context, fleet, instance, pod string, n, pending int) (int, error) {
	p := s.KeyPrefix(fleet)
	got, err := scriptRelease.Run(ctx, s.rdb, []string{p + "load", p + "avail", p + "inst:" + instance, p + "stats", p + "pend:" + instance}, pod, n, pending).Int()
	if err != nil {
		return 0, fmt.Errorf("release %s %s: %w", fleet, pod, err)
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
// tracker (rate_limit and redis_down never reach Redis on their own).
type RejectionCount struct {
	Reason Reason
	Bucket int64
	Count  int64
}

// SyncRequest is one instance's heartbeat for one fleet.
type SyncRequest struct {
	Fleet      string
	Instance   string
	Now        time.Time
	LeaseUntil time.Time
	Counts     []PodCount
	Rejections []RejectionCount
}

// SyncResult is what the instance learns from a heartbeat: the epoch, the
// live instances and the placeable pods with their load, which is the view
// its fallback works from while Redis is down.
type SyncResult struct {
	Epoch        string
	EpochCreated bool
	// Instances are the live instances (this one included) and the end of
	// their leases, which each renews on its heartbeat.
	Instances map[string]time.Time
	Avail     map[string]int
	Reaped    []string
}

// reapLimit bounds how many dead instances one script call reaps, so a
// heartbeat stays short even after a mass failure; the next one goes on.
const reapLimit = 16

// Sync replaces the instance's counts with req.Counts and flushes its
// buffered rejections (see sync.lua).
func (s *Store) Sync(ctx context.Context, req SyncRequest) (SyncResult, error) {
	p := s.KeyPrefix(req.Fleet)
	keys := []string{p + "load", p + "avail", p + "inst:" + req.Instance, p + "pend:" + req.Instance,
		p + "instances", p + "stats", p + "epoch"}
	args := []any{req.Instance, req.Now.UnixMilli(), req.LeaseUntil.UnixMilli(), newEpoch(req.Now), p,
		BucketSlots, reapLimit, s.EventsChannel(req.Fleet), len(req.Counts)}
	for _, c := range req.Counts {
		args = append(args, c.Pod, c.Live, c.Established)
	}
	args = append(args, len(req.Rejections))
	for _, r := range req.Rejections {
		args = append(args, string(r.Reason), r.Bucket, r.Count)
	}
	res, err := scriptSync.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return SyncResult{}, fmt.Errorf("sync %s: %w", req.Fleet, err)
	}
	if len(res) != 5 {
		return SyncResult{}, fmt.Errorf("sync %s: unexpected reply of %d elements", req.Fleet, len(res))
	}
	out := SyncResult{Avail: map[string]int{}}
	out.Epoch, _ = res[0].(string)
	created, _ := res[1].(int64)
	out.EpochCreated = created == 1
	out.Instances = map[string]time.Time{}
	for id, ms := range counts(res[2]) {
		out.Instances[id] = time.UnixMilli(int64(ms))
	}
	pairs := strs(res[3])
	for i := 0; i+1 < len(pairs); i += 2 {
		n, _ := strconv.ParseFloat(pairs[i+1], 64)
		out.Avail[pairs[i]] = int(n)
	}
	out.Reaped = strs(res[4])
	return out, nil
}

// InstanceCounts reads what Redis holds for instance: pod -> connections.
func (s *Store) InstanceCounts(ctx context.Context, fleet, instance string) (map[string]int, error) {
	m, err := s.rdb.HGetAll(ctx, s.key(fleet, "inst:"+instance)).Result()
	if err != nil {
		return nil, fmt.Errorf("instance counts %s %s: %w", fleet, instance, err)
	}
	out := make(map[string]int, len(m))
	for pod, v := range m {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			out[pod] = n
		}
	}
	return out, nil
}

// Reap removes the instances of fleet whose lease ended before now and
// returns their ids.
func (s *Store) Reap(ctx context.Context, fleet string, now time.Time) ([]string, error) {
	res, err := scriptReap.Run(ctx, s.rdb, []string{s.key(fleet, "instances")}, s.KeyPrefix(fleet), now.UnixMilli(), reapLimit).Slice()
	if err != nil {
		return nil, fmt.Errorf("reap %s: %w", fleet, err)
	}
	return strs(res), nil
}

// SetPods replaces the pod registry of fleet. Writing the same list twice
// changes nothing, so several writers may run.
func (s *Store) SetPods(ctx context.Context, fleet string, pods []Pod) error {
	p := s.KeyPrefix(fleet)
	args := []any{len(pods)}
	for _, pod := range pods {
		if err := ValidatePodAddr(pod.Addr); err != nil {
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
	Alive      int64
	Rejections map[Reason]Windows
}

// EpochStart is when the current epoch began (zero when unknown).
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
	if len(res) != 8+3*len(Reasons) {
		return Summary{}, fmt.Errorf("summary %s: unexpected reply of %d elements", fleet, len(res))
	}
	out := Summary{Fleet: fleet, Rejections: map[Reason]Windows{}}
	out.Live, out.Pods, out.Ready, out.Draining, out.Placeable = i64(res[0]), i64(res[1]), i64(res[2]), i64(res[3]), i64(res[4])
	out.Epoch, _ = res[5].(string)
	out.Synced, out.Alive = i64(res[6]), i64(res[7])
	for k, r := range Reasons {
		b := 8 + 3*k
		out.Rejections[r] = Windows{M5: i64(res[b]), M15: i64(res[b+1]), H1: i64(res[b+2])}
	}
	return out, nil
}

// InstanceState is one tracker instance as Redis knows it.
type InstanceState struct {
	ID          string
	LeaseUntil  time.Time
	Live        map[string]int // pod -> connections
	Established map[string]int // pod -> established connections
	Rejections  map[Reason]Windows
}

// Snapshot is the whole state of one fleet, for operators.
type Snapshot struct {
	Fleet      string
	Pods       map[string]Pod // address -> registry entry
	Load       map[string]int // address -> live connections, all instances (avail and load together)
	Live       int64
	Epoch      string
	Synced     []string
	Instances  []InstanceState // sorted by id
	Rejections map[Reason]Windows
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
	if len(res) != 8 {
		return Snapshot{}, fmt.Errorf("snapshot %s: unexpected reply of %d elements", fleet, len(res))
	}
	out := Snapshot{Fleet: fleet, Pods: map[string]Pod{}}
	pods := pairs(res[0])
	for addr, doc := range pods {
		var pod Pod
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
	return out, nil
}

func newEpoch(now time.Time) string {
	return fmt.Sprintf("%d-%s", now.UnixMilli(), randomHex(4))
}

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
