package scaler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Observe reads every configured fleet's summary and per-pod counts from
// Redis and sets the scaler's fleet gauges, wsgate_scaler_ready included,
// so that they exist and are current without waiting for KEDA to poll a
// trigger. It runs the same readiness check KEDA's calls do (more checks
// only watch the epoch more closely). It returns the fleets' errors
// joined; a fleet whose read fails is held (ready 0).
func (s *Server) Observe(ctx context.Context) error {
	var errs []error
	fleets := *s.fleets.Load()
	for _, name := range s.Fleets() {
		fc := fleets[name]
		sum, err := s.summary(ctx, name)
		if err != nil && !errors.Is(err, errHeld) {
			s.metrics.ReadErrors.WithLabelValues(name).Inc()
			errs = append(errs, err)
			continue
		}
		s.metrics.observed(fc, sum)
		loads, err := podLoads(ctx, s.store, name)
		if err != nil {
			s.metrics.ReadErrors.WithLabelValues(name).Inc()
			errs = append(errs, err)
			continue
		}
		s.setPodConnections(name, loads)
	}
	return errors.Join(errs...)
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

// podLoads reads the live connections per pod of the fleet's registry:
// placeable pods from the avail zset, the others (not ready, draining, gone
// from the registry with connections left) from the load zset (tracker/PROTOCOL.md; as report's snapshot reads
// them). One round trip, O(pods), whatever the number of instances.
func podLoads(ctx context.Context, st Store, fleet string) (map[string]int, error) {
	p := st.KeyPrefix(fleet)
	pipe := st.Client().Pipeline()
	load := pipe.ZRangeWithScores(ctx, p+"load", 0, -1)
	avail := pipe.ZRangeWithScores(ctx, p+"avail", 0, -1)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("pod loads %s: %w", fleet, err)
	}
	out := map[string]int{}
	for _, zs := range [][]redis.Z{load.Val(), avail.Val()} {
		for _, z := range zs {
			if pod, ok := z.Member.(string); ok {
				out[pod] = int(z.Score)
			}
		}
	}
	return out, nil
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
