package scaler

import (
	"errors"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
)

// StreamIsActive pushes true each time the fleet turns active: at once
// when it already is, then on every inactive -> active change. It wakes on
// the fleet's events channel, which the admit script publishes to on the
// first live connection and the first rejection of a bucket, and polls
// every PollInterval in case a message is lost (pub/sub is fire and
// forget). KEDA ignores a pushed false, so none is sent. The stream ends
// when KEDA goes away or Close is called.
func (s *Server) StreamIsActive(ref *externalscaler.ScaledObjectRef, stream grpc.ServerStreamingServer[externalscaler.IsActiveResponse]) error {
	t, _, err := s.trigger(ref)
	if err != nil {
		return grpcError(err)
	}
	ctx := stream.Context()
	// The subscription is confirmed before the first evaluation, so an
	// event published right after it is not missed. When Redis is down the
	// poll carries on alone; the subscription reconnects.
	sub, err := s.store.SubscribeEvents(ctx, t.Fleet)
	defer sub.Close()
	if err != nil && ctx.Err() == nil {
		s.log.Debug("events subscription failed, polling only until it recovers", "fleet", t.Fleet, "err", err)
	}
	events := sub.C()
	tick := time.NewTicker(s.cfg.PollInterval)
	defer tick.Stop()

	was := false
	for {
		active, err := s.active(ctx, t)
		switch {
		case err != nil:
			if ctx.Err() == nil && !errors.Is(err, errHeld) {
				s.log.Debug("stream: reading the fleet failed", "fleet", t.Fleet, "err", err)
			}
		case active && !was:
			if err := stream.Send(&externalscaler.IsActiveResponse{Result: true}); err != nil {
				return grpcError(err)
			}
			was = true
		default:
			was = active
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return nil
		case msg := <-events:
			// "active" is the admit script's 0 -> 1 live connections: a
			// transition even if no poll saw the fleet idle in between.
			if msg == "active" {
				was = false
			}
		case <-tick.C:
		}
	}
}
