package scaler

import (
	"context"
	"errors"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"

	"github.com/wsgate/wsgate/fleets"
)

// StreamIsActive pushes true each time the fleet turns active: at once
// when it already is, then on every inactive -> active change. It wakes on
// the fleet's events channel, which a heartbeat publishes to when its
// instance's live connections rise from 0 (at most a heartbeat after the
// admission: tracker/PROTOCOL.md, "The fleet's live count") and the admit
// script on the first rejection of a bucket, and polls
// every PollInterval in case a message is lost (pub/sub is fire and
// forget). KEDA ignores a pushed false, so none is sent. The stream ends
// when KEDA goes away or Close is called.
func (s *Server) StreamIsActive(ref *externalscaler.ScaledObjectRef, stream grpc.ServerStreamingServer[externalscaler.IsActiveResponse]) error {
	t, fc, err := s.trigger(ref)
	if err != nil {
		return grpcError(err)
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	events := s.subscribe(ctx, fc)
	tick := time.NewTicker(s.cfg.PollInterval)
	defer tick.Stop()

	was := false
	for {
		active, err := s.active(ctx, t, fc)
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
			// "active" is a heartbeat's 0 -> n live connections of its
			// instance: a transition even if no poll saw the fleet idle
			// in between.
			if msg == "active" {
				was = false
			}
		case <-tick.C:
		}
	}
}

// subscribe subscribes to the events channel of every group of fc (each
// group's scripts publish on its own: a sharded fleet turns active
// in whichever group takes its first connection) and delivers their
// messages on one channel until ctx ends. Every subscription is confirmed
// before it returns, so an event published right after it is not missed.
// When Redis is down the poll carries on alone; a subscription reconnects.
func (s *Server) subscribe(ctx context.Context, fc fleets.Fleet) <-chan string {
	out := make(chan string)
	for _, g := range fc.GroupNames() {
		sub, err := s.store.SubscribeEvents(ctx, g)
		if err != nil && ctx.Err() == nil {
			s.log.Debug("events subscription failed, polling only until it recovers", "fleet", fc.Name, "group", g, "err", err)
		}
		go func() {
			defer sub.Close()
			for {
				select {
				case <-ctx.Done():
					return
				case msg := <-sub.C():
					select {
					case out <- msg:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}
	return out
}
