package scaler

// This file serves KEDA's external scaler contract
// (https://keda.sh/docs/latest/concepts/external-scalers/): GetMetricSpec
// names one metric per trigger, GetMetrics reports it, IsActive answers the
// 0 <-> 1 question. StreamIsActive is in stream.go.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// Reader reads one fleet's summary; *store.Store implements it in one
// Redis round trip per group of the fleet (one for an unsharded fleet),
// whatever the number of pods.
type Reader interface {
	FleetSummary(ctx context.Context, f fleets.Fleet, now time.Time) (store.FleetSummary, error)
}

// Store is what the scaler needs of the fleets' state in Redis:
// *store.Store. Calls that name a fleet by string take a group's name
// (fleets.GroupName): a sharded fleet is read and reaped group by group.
type Store interface {
	Reader
	// Instances reads the group's tracker instances and their seqs.
	Instances(ctx context.Context, group string) (map[string]uint64, error)
	// Reap removes those of ids whose lease ended by Redis' clock.
	Reap(ctx context.Context, group string, ids []string) ([]string, error)
	// FleetPodLoads reads the live connections per pod of every group.
	FleetPodLoads(ctx context.Context, f fleets.Fleet) (map[string]int, error)
	// SubscribeEvents subscribes to a group's events: the admit script
	// announces activity there.
	SubscribeEvents(ctx context.Context, group string) (*store.Events, error)
	// RecordDecision writes a trigger's decision (decision.go).
	RecordDecision(ctx context.Context, rec store.DecisionRecord) error
	// OtherDecisions reads the other triggers' fresh recommendations.
	OtherDecisions(ctx context.Context, req store.OthersRequest) (map[string]string, error)
}

// LayoutReader is implemented by a Store that reads the layout (shards)
// Redis records for a fleet, as *store.Store does (RecordedLayout).
type LayoutReader interface {
	// RecordedLayout is the recorded layout, 0 when none.
	RecordedLayout(ctx context.Context, fleet string) (int, error)
}

// ScaleDownGate holds a scale-down until the pods to remove are prepared
// (marked draining, their pod-deletion-cost patched and observed). Gate is
// called on every desiredReplicas evaluation with the fleet's ready
// replicas and the drain floor (the highest fresh recommendation among the
// fleet's triggers, so that every trigger hands it the same number; see
// gated), and returns the number to report: recommended when nothing is to
// be removed or the pods are ready to go, something between ready and
// recommended while it prepares them.
// It must not block longer than the RPC's context allows.
type ScaleDownGate interface {
	Gate(ctx context.Context, fleet string, ready, recommended int) int
}

// Server implements KEDA's ExternalScalerServer for wsgate fleets.
type Server struct {
	externalscaler.UnimplementedExternalScalerServer

	cfg     Config
	store   Store
	fleets  atomic.Pointer[map[string]fleets.Fleet] // replaced whole by Apply
	ready   *readiness
	gate    ScaleDownGate
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time

	done      chan struct{} // closed by Close: streams end
	closeOnce sync.Once

	podsMu sync.Mutex
	pods   map[string]map[string]struct{} // fleet -> pods with a pod_connections series

	// layouts is fleet -> the layout Redis recorded for it when Observe
	// last read it (absent: none, or not read yet).
	layouts sync.Map

	reapMu  sync.Mutex
	stalled map[string]*store.Stalled // fleet -> the reaper's witness
	judge   InstanceJudge
}

// InstanceJudge tells whether Kubernetes still lists a tracker instance's
// pod (see discovery.Discovery.InstanceAlive).
type InstanceJudge interface {
	InstanceAlive(fleet, id string) (alive, known bool)
}

// WithInstanceJudge lets Kubernetes judge expired instances
// (Config.ExpiredInstances kube).
func WithInstanceJudge(j InstanceJudge) Option { return func(s *Server) { s.judge = j } }

// Option changes how New builds a Server.
type Option func(*Server)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithMetrics sets the collectors (default: unregistered ones).
func WithMetrics(m *Metrics) Option { return func(s *Server) { s.metrics = m } }

// WithGate sets the scale-down gate (default none: the recommendation is
// reported as is).
func WithGate(g ScaleDownGate) Option { return func(s *Server) { s.gate = g } }

// WithInstanceCounter makes readiness expect, when Config.ExpectedInstances
// is unset, as many tracker instances as c counts (Kubernetes discovery of
// the fleet's envoyService).
func WithInstanceCounter(c InstanceCounter) Option { return func(s *Server) { s.ready.counter = c } }

// WithClock sets the time source, for tests with a controlled clock.
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// New validates cfg (after defaults) and returns a Server on store.
func New(cfg Config, st Store, opts ...Option) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("scaler config: %w", err)
	}
	s := &Server{
		cfg: cfg, store: st,
		ready: newReadiness(cfg.Settle, cfg.ReadinessRatio, int64(cfg.ExpectedInstances)),
		log:   slog.Default(), now: time.Now, done: make(chan struct{}), stalled: map[string]*store.Stalled{},
		pods: map[string]map[string]struct{}{},
	}
	for _, o := range opts {
		o(s)
	}
	if s.metrics == nil {
		s.metrics = NewMetrics(nil)
	}
	if cfg.ExpiredInstances == fleets.ExpiredKube && s.judge == nil {
		return nil, errors.New("scaler config: expired-instances kube needs Kubernetes to judge (--kube)")
	}
	if err := s.Apply(cfg.Fleets); err != nil {
		return nil, err
	}
	return s, nil
}

// Apply serves fleets from now on (a changed fleets file): GetMetricSpec
// and GetMetrics of a fleet use its new cap at their next call; a removed
// fleet's triggers get unknown fleet. If configs is invalid nothing changes,
// nor if it changes a served fleet's shards: as the trackers (PROTOCOL.md,
// "Shards"), that is an offline change, with a restart.
func (s *Server) Apply(configs []fleets.Fleet) error {
	var served map[string]fleets.Fleet
	if p := s.fleets.Load(); p != nil {
		served = *p
	}
	m := make(map[string]fleets.Fleet, len(configs))
	for _, f := range configs {
		f = f.WithDefaults()
		if err := f.Validate(); err != nil {
			return fmt.Errorf("scaler config: %w", err)
		}
		if _, dup := m[f.Name]; dup {
			return fmt.Errorf("scaler config: fleet %s defined twice", f.Name)
		}
		if old, ok := served[f.Name]; ok && old.Shards != f.Shards {
			return fmt.Errorf("scaler config: fleet %s: shards %d -> %d: a running fleet's shards cannot change; keeping the whole configuration as it was. To change them (README, \"Sharded fleets\"): drain the fleet, restart every tracker and the scaler with the new shards, then wsgate forget-layout --fleet %s",
				f.Name, old.Shards, f.Shards, f.Name)
		}
		if s.cfg.ExpiredInstances == fleets.ExpiredKube && f.EnvoyService == "" {
			return fmt.Errorf("scaler config: expired-instances kube: fleet %s names no envoyService, so Kubernetes cannot say whether its instances live", f.Name)
		}
		m[f.Name] = f
	}
	var old map[string]fleets.Fleet
	if p := s.fleets.Swap(&m); p != nil {
		old = *p
	}
	s.fleetSeries(old, m)
	return nil
}

// FleetSeries is implemented by components beside the scaler that export
// per-fleet series (the pod-deletion-cost hook, as the gate): Apply creates
// a configured fleet's series at 0 and deletes a removed fleet's.
type FleetSeries interface {
	AddFleet(fleet string)
	RemoveFleet(fleet string)
}

// fleetSeries creates the series of the fleets in next and deletes those
// of the fleets only in old.
func (s *Server) fleetSeries(old, next map[string]fleets.Fleet) {
	fs, _ := s.gate.(FleetSeries)
	for name, fc := range next {
		if _, ok := old[name]; !ok {
			s.metrics.addFleet(fc)
			if fs != nil {
				fs.AddFleet(name)
			}
		} else {
			s.metrics.Cap.WithLabelValues(name).Set(float64(fc.MaxConnectionsPerPod))
		}
	}
	for name := range old {
		if _, ok := next[name]; ok {
			continue
		}
		s.metrics.removeFleet(name)
		if fs != nil {
			fs.RemoveFleet(name)
		}
		s.podsMu.Lock()
		delete(s.pods, name)
		s.podsMu.Unlock()
	}
}

// Fleets lists the configured fleet names, sorted.
func (s *Server) Fleets() []string {
	m := *s.fleets.Load()
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Close ends every StreamIsActive, so a graceful gRPC stop can complete.
func (s *Server) Close() { s.closeOnce.Do(func() { close(s.done) }) }

var (
	errUnknownFleet = errors.New("unknown fleet")
	errHeld         = errors.New("metrics held")
)

// trigger parses a ScaledObjectRef's metadata and finds its fleet.
func (s *Server) trigger(ref *externalscaler.ScaledObjectRef) (Trigger, fleets.Fleet, error) {
	t, err := ParseTrigger(ref.GetScalerMetadata())
	if err != nil {
		return t, fleets.Fleet{}, err
	}
	fc, ok := (*s.fleets.Load())[t.Fleet]
	if !ok {
		return t, fc, fmt.Errorf("fleet %q (configured: %s): %w", t.Fleet, strings.Join(s.Fleets(), ", "), errUnknownFleet)
	}
	return t, fc, nil
}

// summary reads the fleet, summed over its groups, and checks readiness;
// the summary is returned even when held, with the reason as an error
// wrapping errHeld. Readiness is judged group by group, each on its own
// epoch and syncs: a sharded fleet is held while any of its groups is
// (one group recovering from data loss undercounts the whole fleet's live
// connections). An unsharded fleet is its one group.
func (s *Server) summary(ctx context.Context, fc fleets.Fleet) (store.Summary, error) {
	now := s.now()
	if v, ok := s.layouts.Load(fc.Name); ok && v.(int) != max(fc.Shards, 1) {
		// The trackers follow Redis' layout and keep out of Redis while
		// their shards differ; the groups this scaler would sum are not
		// the fleet's. Nothing it could report is right.
		s.metrics.Ready.WithLabelValues(fc.Name).Set(0)
		return store.Summary{Fleet: fc.Name}, fmt.Errorf("%w: fleet %s has shards %d in the fleets file, but Redis records layout %d: set shards: %d in the fleets file, or reshard the fleet (README, \"Sharded fleets\")",
			errHeld, fc.Name, max(fc.Shards, 1), v, v)
	}
	fs, err := s.store.FleetSummary(ctx, fc, now)
	if err != nil {
		s.metrics.Ready.WithLabelValues(fc.Name).Set(0) // nothing to report: held
		return fs.Summary, err
	}
	// Every group is checked, so that each one's epoch memory follows it
	// even while another holds the fleet.
	var held error
	for _, g := range fs.Groups {
		if err := s.ready.check(g, now); err != nil && held == nil {
			held = err
			if len(fs.Groups) > 1 {
				held = fmt.Errorf("group %s: %w", g.Fleet, err)
			}
		}
	}
	if held != nil {
		s.metrics.Ready.WithLabelValues(fc.Name).Set(0)
		return fs.Summary, fmt.Errorf("%w: %w", errHeld, held)
	}
	s.metrics.Ready.WithLabelValues(fc.Name).Set(1)
	return fs.Summary, nil
}

// grpcError turns an error of this package into the status KEDA sees.
// Called once per RPC, at the edge.
func grpcError(err error) error {
	var md *metadataError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &md):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, errUnknownFleet):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, errHeld):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}

// MetricName is the name GetMetricSpec gives a trigger's metric: KEDA
// prefixes it with the trigger index, so it only needs to be readable.
func MetricName(t Trigger) string {
	fleet := strings.NewReplacer(".", "-", "_", "-").Replace(strings.ToLower(t.Fleet))
	return "wsgate-" + fleet + "-" + strings.ToLower(string(t.Metric))
}

// GetMetricSpec names the trigger's one metric and its target.
func (s *Server) GetMetricSpec(_ context.Context, ref *externalscaler.ScaledObjectRef) (*externalscaler.GetMetricSpecResponse, error) {
	t, fc, err := s.trigger(ref)
	if err != nil {
		return nil, grpcError(err)
	}
	target := 1.0
	switch t.Metric {
	case MetricConnections:
		target = float64(fc.MaxConnectionsPerPod) * t.Params.TargetUtilization
	case MetricSaturation:
		target = t.Params.TargetUtilization
	case MetricRateLimitPressure:
		target = t.RateLimitTarget
	}
	return &externalscaler.GetMetricSpecResponse{MetricSpecs: []*externalscaler.MetricSpec{{
		MetricName: MetricName(t), TargetSizeFloat: target,
	}}}, nil
}

// GetMetrics reports the trigger's metric, or holds it (Unavailable, which
// KEDA counts toward the ScaledObject's fallback) while the counts are
// incomplete.
func (s *Server) GetMetrics(ctx context.Context, req *externalscaler.GetMetricsRequest) (*externalscaler.GetMetricsResponse, error) {
	t, fc, err := s.trigger(req.GetScaledObjectRef())
	if err != nil {
		return nil, grpcError(err)
	}
	name := MetricName(t)
	if n := req.GetMetricName(); n != "" && !strings.EqualFold(n, name) {
		return nil, status.Errorf(codes.InvalidArgument, "metricName %q: this trigger reports only %q (or send an empty name)", n, name)
	}
	v, err := s.evaluate(ctx, req.GetScaledObjectRef(), t, fc)
	if err != nil {
		if errors.Is(err, errHeld) {
			s.log.Warn("holding metric: fleet counts incomplete", "fleet", t.Fleet, "metric", string(t.Metric), "why", err.Error())
		}
		return nil, grpcError(err)
	}
	s.metrics.Reported.WithLabelValues(t.Fleet, string(t.Metric)).Set(v)
	return &externalscaler.GetMetricsResponse{MetricValues: []*externalscaler.MetricValue{{
		MetricName: name, MetricValueFloat: v, MetricValue: int64(v),
	}}}, nil
}

// evaluate computes the value of t's metric.
func (s *Server) evaluate(ctx context.Context, ref *externalscaler.ScaledObjectRef, t Trigger, fc fleets.Fleet) (float64, error) {
	sum, err := s.summary(ctx, fc)
	if t.Metric == MetricDesiredReplicas && (err == nil || errors.Is(err, errHeld)) {
		return s.recommend(ctx, ref, t, fc, sum, err)
	}
	if err != nil {
		return 0, err
	}
	switch t.Metric {
	case MetricConnections:
		return float64(sum.Live), nil
	case MetricSaturation:
		return saturation(sum, fc.MaxConnectionsPerPod), nil
	case MetricRateLimitPressure:
		return rateLimitPressure(sum, fc.RatePerSecond), nil
	}
	return 0, fmt.Errorf("metric %q not implemented", t.Metric)
}

// recommend runs the policy and the gate and records the decision in the
// trigger's own scaler hash, also when held.
func (s *Server) recommend(ctx context.Context, ref *externalscaler.ScaledObjectRef, t Trigger, fc fleets.Fleet, sum store.Summary, held error) (float64, error) {
	id := TriggerID(ref, t)
	fields := map[string]any{
		"scaledObject": ref.GetNamespace() + "/" + ref.GetName(), "params": paramsLabel(t.Params),
		"readyPods": sum.Ready, "updatedMs": s.now().UnixMilli(),
	}
	if held != nil {
		fields["ready"], fields["reason"] = 0, held.Error()
		s.persist(ctx, t.Fleet, id, fields)
		return 0, held
	}
	d := Decide(t.Params, policyInput(sum, fc))
	reported, reason := int(d.Replicas), d.Reason
	if s.gate != nil {
		reported, reason = s.gated(ctx, t.Fleet, id, int(sum.Ready), int(d.Replicas), reason, fields)
	}
	fields["recommended"], fields["reported"], fields["ready"], fields["reason"] = d.Replicas, reported, 1, reason
	s.persist(ctx, t.Fleet, id, fields)
	return float64(reported), nil
}

func policyInput(sum store.Summary, fc fleets.Fleet) Input {
	c, n := sum.Rejections[store.ReasonCapacity], sum.Rejections[store.ReasonNoPods]
	return Input{
		Cap: fc.MaxConnectionsPerPod, RetryAfter: time.Duration(fc.RetryAfter),
		Live: sum.Live, Pods: sum.Pods, Ready: sum.Ready, Placeable: sum.Placeable,
		Pressure: Window{M5: c.M5 + n.M5, M15: c.M15 + n.M15, H1: c.H1 + n.H1},
	}
}

// saturation is live ÷ (placeable pods × cap). With no placeable pod it is
// 1 when connections exist or were refused, 0 otherwise.
func saturation(sum store.Summary, capPerPod int) float64 {
	if sum.Placeable == 0 {
		if sum.Live > 0 || policyInput(sum, fleets.Fleet{}).Pressure.M5 > 0 {
			return 1
		}
		return 0
	}
	return float64(sum.Live) / float64(sum.Placeable*int64(capPerPod))
}

// rateLimitPressure is the rate_limit rejections per second of the last
// 5 min, per live tracker instance, as a fraction of one instance's rate.
func rateLimitPressure(sum store.Summary, ratePerSecond float64) float64 {
	rl := sum.Rejections[store.ReasonRateLimit].M5
	if rl == 0 || ratePerSecond <= 0 {
		return 0
	}
	return float64(rl) / store.Window5m.Seconds() / float64(max(sum.Alive, 1)) / ratePerSecond
}

// IsActive is true when the fleet has live connections or recent
// rejections (rate_limit ones for a rateLimitPressure trigger). While the
// counts are held, a true answer stands (more demand can only be
// undercounted) but a false one is an error: no scale to zero on
// incomplete data.
func (s *Server) IsActive(ctx context.Context, ref *externalscaler.ScaledObjectRef) (*externalscaler.IsActiveResponse, error) {
	t, fc, err := s.trigger(ref)
	if err != nil {
		return nil, grpcError(err)
	}
	active, err := s.active(ctx, t, fc)
	if err != nil {
		return nil, grpcError(err)
	}
	return &externalscaler.IsActiveResponse{Result: active}, nil
}

func (s *Server) active(ctx context.Context, t Trigger, fc fleets.Fleet) (bool, error) {
	sum, err := s.summary(ctx, fc)
	if err != nil && !errors.Is(err, errHeld) {
		return false, err
	}
	rej := policyInput(sum, fleets.Fleet{}).Pressure.M5
	if t.Metric == MetricRateLimitPressure {
		rej = sum.Rejections[store.ReasonRateLimit].M5
	}
	active := sum.Live > t.ActivationConnections || rej > t.ActivationRejections
	if !active && err != nil {
		return false, err
	}
	return active, nil
}

// Reap removes expired tracker instances of every fleet, so counts stay
// true even when every tracker died: those whose seq this scaler watched
// stand still for a full InstanceTTL and whose lease Redis also judges
// ended, and with ExpiredInstances kube only those whose pod Kubernetes no
// longer lists. With ExpiredInstances keep it does nothing. It returns the fleets'
// errors joined.
func (s *Server) Reap(ctx context.Context) error {
	if s.cfg.ExpiredInstances == fleets.ExpiredKeep {
		return nil
	}
	s.reapMu.Lock()
	defer s.reapMu.Unlock()
	var errs []error
	configured := *s.fleets.Load()
	for _, f := range s.reapGroups(configured) {
		seqs, err := s.store.Instances(ctx, f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		w := s.stalled[f]
		if w == nil {
			w = store.NewStalled(s.cfg.InstanceTTL)
			s.stalled[f] = w
		}
		stalled := w.Observe(seqs, "", s.now())
		if s.cfg.ExpiredInstances == fleets.ExpiredKube {
			// Kubernetes knows the fleet's Envoy Service, not its groups.
			fleet, _, _ := fleets.SplitGroup(f)
			stalled = s.goneFromKubernetes(fleet, stalled)
		}
		ids, err := s.store.Reap(ctx, f, stalled)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(ids) > 0 {
			// The series is the fleet's, whichever group reaped.
			name, _, _ := fleets.SplitGroup(f)
			s.metrics.Reaped.WithLabelValues(name).Add(float64(len(ids)))
			s.log.Info("reaped expired tracker instances", "fleet", name, "group", f, "instances", ids)
		}
	}
	return errors.Join(errs...)
}

// reapGroups lists the groups of the configured fleets, sorted: every
// tracker heartbeats each group of its fleet with a seq and a lease of
// that group, so each group is watched and reaped on its own.
func (s *Server) reapGroups(configured map[string]fleets.Fleet) []string {
	var out []string
	for _, name := range s.Fleets() {
		out = append(out, configured[name].GroupNames()...)
	}
	return out
}

// goneFromKubernetes keeps the ids whose pod Kubernetes no longer lists: an
// instance that is only cut off from Redis keeps its slots.
func (s *Server) goneFromKubernetes(fleet string, ids []string) []string {
	var out []string
	for _, id := range ids {
		if alive, known := s.judge.InstanceAlive(fleet, id); known && !alive {
			out = append(out, id)
		}
	}
	return out
}

// RunReaper calls Reap every interval until ctx ends.
func (s *Server) RunReaper(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if err := s.Reap(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("reaping expired tracker instances failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
