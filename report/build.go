package report

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// View names one view of `wsgate metrics`.
type View string

// The views, in the order they are shown.
const (
	ViewConnections View = "connections"
	ViewRejections  View = "rejections"
	ViewScaling     View = "scaling"
	ViewDetailed    View = "detailed"
	ViewReadiness   View = "readiness"
)

// AllViews lists every view in display order.
var AllViews = []View{ViewConnections, ViewRejections, ViewScaling, ViewDetailed, ViewReadiness}

// ParseView checks a view name given on the command line.
func ParseView(s string) (View, error) {
	for _, v := range AllViews {
		if string(v) == s {
			return v, nil
		}
	}
	names := make([]string, len(AllViews))
	for i, v := range AllViews {
		names[i] = string(v)
	}
	return "", fmt.Errorf("unknown view %q: want one of %s", s, strings.Join(names, ", "))
}

// Options says which views to build and how to judge readiness.
type Options struct {
	// Views to build; all of them when empty.
	Views []View
	// Caps is maxConnectionsPerPod by fleet, where known.
	Caps map[string]int
	// Settle and ReadinessRatio are the scaler's readiness gate: an epoch
	// must be Settle old, ReadinessRatio of the alive instances synced, and
	// that ratio of those published their totals.
	Settle         time.Duration
	ReadinessRatio float64
	// Now is when the state was read.
	Now time.Time
}

// Build turns fleet states into a Report, fleets sorted by name.
func Build(states []FleetState, o Options) Report {
	views := o.Views
	if len(views) == 0 {
		views = AllViews
	}
	rep := Report{Schema: SchemaVersion, GeneratedAt: o.Now.UTC(), Views: views, Fleets: []Fleet{}}
	for _, st := range states {
		f := Fleet{Name: st.Snapshot.Fleet}
		var cap *int
		if c, ok := o.Caps[f.Name]; ok {
			cap = &c
		}
		for _, v := range views {
			switch v {
			case ViewConnections:
				f.Connections = connections(st.Snapshot, cap)
			case ViewRejections:
				f.Rejections = rejections(st.Snapshot)
			case ViewScaling:
				f.Scaling = scaling(st, cap, o.Now)
			case ViewDetailed:
				f.Detailed = detailed(st.Snapshot, o.Now)
			case ViewReadiness:
				f.Readiness = fleetReadiness(st, o)
			}
		}
		f.Groups = groups(st, o)
		rep.Fleets = append(rep.Fleets, f)
	}
	sort.Slice(rep.Fleets, func(i, j int) bool { return rep.Fleets[i].Name < rep.Fleets[j].Name })
	return rep
}

func registry(s store.Snapshot) RegistryCount {
	var r RegistryCount
	for _, p := range s.Pods {
		r.Pods++
		if p.Ready {
			r.Ready++
		}
		if p.Draining {
			r.Draining++
		}
	}
	return r
}

// podAddrs lists the registered pods and those still holding connections,
// sorted by address.
func podAddrs(s store.Snapshot) []string {
	seen := map[string]bool{}
	var out []string
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for a := range s.Pods {
		add(a)
	}
	for a := range s.Load {
		add(a)
	}
	for _, in := range s.Instances {
		for a := range in.Live {
			add(a)
		}
	}
	sort.Strings(out)
	return out
}

func connections(s store.Snapshot, cap *int) *Connections {
	c := &Connections{Cap: cap, Live: s.Live, Summary: registry(s), Pods: []PodCounts{}}
	est := map[string]int{}
	for _, in := range s.Instances {
		for pod, n := range in.Established {
			est[pod] += n
			c.Established += n
		}
	}
	for _, a := range podAddrs(s) {
		p, reg := s.Pods[a]
		c.Pods = append(c.Pods, PodCounts{
			Addr: a, Name: p.Name, Node: p.Node, Registered: reg, Ready: p.Ready, Draining: p.Draining,
			Live: s.Load[a], Established: est[a],
		})
	}
	return c
}

func reasonWindows(m map[store.Reason]store.Windows) []ReasonWindows {
	out := make([]ReasonWindows, 0, len(store.Reasons))
	for _, r := range store.Reasons {
		w := m[r]
		out = append(out, ReasonWindows{Reason: string(r), Windows: Windows{M5: w.M5, M15: w.M15, H1: w.H1}})
	}
	return out
}

func rejections(s store.Snapshot) *Rejections {
	r := &Rejections{Fleet: reasonWindows(s.Rejections), Instances: []InstanceRejections{}}
	for _, in := range s.Instances {
		r.Instances = append(r.Instances, InstanceRejections{Instance: in.ID, Reasons: reasonWindows(in.Rejections)})
	}
	return r
}

func scaling(st FleetState, cap *int, now time.Time) *Scaling {
	s := st.Snapshot
	sc := &Scaling{Registry: registry(s), Live: s.Live, Cap: cap, Candidates: []Candidate{}}
	if st.ScaleDown != nil {
		sc.CandidatesSource = SourceScaler
		for i, r := range st.ScaleDown {
			p := s.Pods[r.Pod]
			sc.Candidates = append(sc.Candidates, Candidate{
				Rank: i + 1, Addr: r.Pod, Name: p.Name, Priority: r.Priority, Live: s.Load[r.Pod], Draining: p.Draining,
			})
		}
	} else {
		// The scaler's order, recomputed: fewest connections first, so a
		// scale-down cuts as few as possible; address breaks ties.
		sc.CandidatesSource = SourceComputed
		var pods []fleets.Pod
		for _, p := range s.Pods {
			pods = append(pods, p)
		}
		sort.Slice(pods, func(i, j int) bool {
			li, lj := s.Load[pods[i].Addr], s.Load[pods[j].Addr]
			if li != lj {
				return li < lj
			}
			return pods[i].Addr < pods[j].Addr
		})
		for i, p := range pods {
			n := s.Load[p.Addr]
			sc.Candidates = append(sc.Candidates, Candidate{
				Rank: i + 1, Addr: p.Addr, Name: p.Name, Priority: float64(n), Live: n, Draining: p.Draining,
			})
		}
	}
	sc.Scalers = make([]ScalerState, 0, len(st.Scalers))
	for _, rec := range st.Scalers {
		ss := ScalerState{
			Trigger: rec.Trigger, ScaledObject: rec.ScaledObject, Params: rec.Params, DrainFloor: rec.DrainFloor, DrivenBy: rec.DrivenBy,
			Recommended: rec.Recommended, Reported: rec.Reported, Ready: rec.Ready, ReadyPods: rec.ReadyPods, Reason: rec.Reason,
		}
		if !rec.Updated.IsZero() {
			u := rec.Updated.UTC()
			ss.UpdatedAt = &u
			ss.AgeSeconds = now.Sub(u).Seconds()
		}
		sc.Scalers = append(sc.Scalers, ss)
	}
	return sc
}

// leaseClock is the clock leases are judged by: Redis' own, as read with
// the snapshot (leases are times of Redis' clock, set by the scripts; the
// host running the report may be off by any amount), or now for a snapshot
// that does not carry it.
func leaseClock(s store.Snapshot, now time.Time) time.Time {
	if !s.RedisNow.IsZero() {
		return s.RedisNow
	}
	return now
}

func detailed(s store.Snapshot, now time.Time) *Detailed {
	d := &Detailed{Instances: []InstanceInfo{}, Pods: []PodRow{}}
	at := leaseClock(s, now)
	for _, in := range s.Instances {
		d.Instances = append(d.Instances, InstanceInfo{ID: in.ID, LeaseExpiresAt: in.LeaseUntil.UTC(), Alive: !in.LeaseUntil.Before(at)})
	}
	for _, a := range podAddrs(s) {
		row := PodRow{Addr: a, Name: s.Pods[a].Name, Live: s.Load[a], Cells: make([]Cell, 0, len(s.Instances))}
		for _, in := range s.Instances {
			row.Cells = append(row.Cells, Cell{Instance: in.ID, Live: in.Live[a], Established: in.Established[a]})
		}
		d.Pods = append(d.Pods, row)
	}
	return d
}

func readiness(s store.Snapshot, o Options) *Readiness {
	r := &Readiness{Epoch: s.Epoch, SettleSeconds: o.Settle.Seconds(), RequiredShare: o.ReadinessRatio, Unsynced: []string{}}
	synced := map[string]bool{}
	for _, id := range s.Synced {
		synced[id] = true
	}
	at := leaseClock(s, o.Now)
	published := 0 // of the synced ones: the scaler's live count misses the others
	for _, in := range s.Instances {
		if in.LeaseUntil.Before(at) {
			continue
		}
		r.Alive++
		if synced[in.ID] {
			r.Synced++
			if in.Published {
				published++
			}
		} else {
			r.Unsynced = append(r.Unsynced, in.ID)
		}
	}
	// With no instance alive there is nothing left to wait for.
	r.SyncedShare = 1
	if r.Alive > 0 {
		r.SyncedShare = float64(r.Synced) / float64(r.Alive)
	}
	if !s.RecoveryUntil.IsZero() {
		// The admit script grants nothing before `until` by Redis' clock,
		// nor before a tracker confirmed the wait on its own clock.
		u := s.RecoveryUntil.UTC()
		r.RecoveryUntil = &u
		r.RecoveryConfirmed = s.RecoveryConfirmed
		if left := s.RecoveryUntil.Sub(at); left > 0 {
			r.RecoverySecondsLeft = left.Seconds()
		}
		r.Recovering = r.RecoverySecondsLeft > 0 || !r.RecoveryConfirmed
	}
	start := (store.Summary{Epoch: s.Epoch}).EpochStart()
	if !start.IsZero() {
		u := start.UTC()
		r.EpochStart = &u
		r.EpochAgeSeconds = at.Sub(start).Seconds() // the id's time is Redis' clock
	}
	switch {
	case s.Epoch == "":
		r.Why = "no epoch: no tracker has synced since Redis started"
	case r.EpochAgeSeconds < r.SettleSeconds:
		r.Why = fmt.Sprintf("epoch %s old, settle is %s", roundDur(r.EpochAgeSeconds), roundDur(r.SettleSeconds))
	case r.SyncedShare < r.RequiredShare:
		r.Why = fmt.Sprintf("%d of %d alive instances synced, %.0f%% required", r.Synced, r.Alive, 100*r.RequiredShare)
	case r.Synced > 0 && float64(published) < math.Ceil(r.RequiredShare*float64(r.Synced)-1e-9):
		// as scaler/readiness.go: trackers of a version before 2026-12
		// heartbeat without publishing what they hold
		r.Why = fmt.Sprintf("%d of %d synced instances published their connections, %.0f%% required (older trackers publish none)", published, r.Synced, 100*r.RequiredShare)
	default:
		r.Ready = true
	}
	return r
}

func roundDur(sec float64) time.Duration {
	return time.Duration(sec * float64(time.Second)).Round(time.Second)
}

// groups is the per-group health of a sharded fleet (nil otherwise).
func groups(st FleetState, o Options) []Group {
	if len(st.Groups) == 0 {
		return nil
	}
	out := make([]Group, 0, len(st.Groups))
	for _, g := range st.Groups {
		if g.Err != nil {
			out = append(out, Group{Name: g.Name, Error: g.Err.Error(), Why: "unreachable: " + g.Err.Error()})
			continue
		}
		r := readiness(g.Snapshot, o)
		out = append(out, Group{Name: g.Name, Reachable: true, Live: g.Snapshot.Live, Registry: registry(g.Snapshot),
			Epoch: g.Snapshot.Epoch, Ready: r.Ready, Why: r.Why, Recovering: r.Recovering})
	}
	return out
}

// fleetReadiness is the readiness view of st: of a sharded fleet, judged
// group by group as the scaler does. The fleet is ready only when every
// group is (one group's lost data undercounts the whole fleet); Why names
// the first group that holds it back; it is recovering while any group is.
// The epoch, clocks and instance counts shown are the first group's that
// holds readiness back, or group 0's when all are ready: the groups view
// (Fleet.Groups) lists every group's.
func fleetReadiness(st FleetState, o Options) *Readiness {
	if len(st.Groups) == 0 {
		return readiness(st.Snapshot, o)
	}
	var (
		shown      *Readiness
		recovering bool
	)
	for _, g := range st.Groups {
		if g.Err != nil {
			if shown == nil || shown.Ready {
				shown = &Readiness{Why: fmt.Sprintf("group %s unreachable: %v", g.Name, g.Err), Unsynced: []string{}, SettleSeconds: o.Settle.Seconds(), RequiredShare: o.ReadinessRatio}
			}
			continue
		}
		r := readiness(g.Snapshot, o)
		recovering = recovering || r.Recovering
		switch {
		case shown == nil:
			shown = r
		case shown.Ready && !r.Ready:
			shown = r
		default:
			continue
		}
		if !r.Ready {
			r.Why = "group " + g.Name + ": " + r.Why
		}
	}
	shown.Recovering = shown.Recovering || recovering
	return shown
}
