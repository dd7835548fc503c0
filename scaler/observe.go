package scaler

import (
	"context"
	"errors"
	"time"
)

// Observe reads every configured fleet's summary and per-pod counts from
// Redis (a sharded fleet's summed over its groups) and sets the scaler's fleet gauges, wsgate_scaler_ready included,
// so that they exist and are current without waiting for KEDA to poll a
// trigger. It runs the same readiness check KEDA's calls do (more checks
// only watch the epoch more closely). It returns the fleets' errors
// joined; a fleet whose read fails is held (ready 0).
func (s *Server) Observe(ctx context.Context) error {
	var errs []error
	fleets := *s.fleets.Load()
	for _, name := range s.Fleets() {
		fc := fleets[name]
		// A failed read keeps the layout last read; the summary, read from
		// the same Redis next, counts the error.
		_ = s.readLayout(ctx, name)
		sum, err := s.summary(ctx, fc)
		if err != nil && !errors.Is(err, errHeld) {
			s.metrics.ReadErrors.WithLabelValues(name).Inc()
			errs = append(errs, err)
			continue
		}
		s.metrics.observed(fc, sum)
		loads, err := s.store.FleetPodLoads(ctx, fc)
		if err != nil {
			s.metrics.ReadErrors.WithLabelValues(name).Inc()
			errs = append(errs, err)
			continue
		}
		s.setPodConnections(name, loads)
	}
	return errors.Join(errs...)
}

// readLayout remembers the layout Redis records for fleet, which summary
// compares with the fleet's shards. It is read here, every observer
// interval, not on KEDA's calls, which then cost no extra round trip.
func (s *Server) readLayout(ctx context.Context, fleet string) error {
	lr, ok := s.store.(LayoutReader)
	if !ok {
		return nil
	}
	n, err := lr.RecordedLayout(ctx, fleet)
	switch {
	case err != nil:
		return err // the last one read stands
	case n > 0:
		s.layouts.Store(fleet, n)
	default:
		s.layouts.Delete(fleet)
	}
	return nil
}

// setPodConnections replaces fleet's per-pod series with loads: a pod gone
// from the registry loses its series.
func (s *Server) setPodConnections(fleet string, loads map[string]int) {
	s.podsMu.Lock()
	defer s.podsMu.Unlock()
	for pod := range s.pods[fleet] {
		if _, ok := loads[pod]; !ok {
			s.metrics.PodConnections.DeleteLabelValues(fleet, pod)
		}
	}
	seen := make(map[string]struct{}, len(loads))
	for pod, n := range loads {
		s.metrics.PodConnections.WithLabelValues(fleet, pod).Set(float64(n))
		seen[pod] = struct{}{}
	}
	s.pods[fleet] = seen
}

// RunObserver calls Observe every interval until ctx ends.
func (s *Server) RunObserver(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if err := s.Observe(ctx); err != nil && ctx.Err() == nil {
			s.log.Debug("reading fleet state for metrics failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
