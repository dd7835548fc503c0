package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"

	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/store"
)

// runScript is the scripted phase: it fills the fleet past its capacity
// through both gateways, closes some connections and waits for their
// release, then shows the operators' views and the scaler's answer. Unless
// o.scriptOnly, it then holds its remaining connections until ctx ends.
func runScript(ctx context.Context, out io.Writer, d demoSystem, o demoOptions) error {
	p := newDemoPrinter(out)
	slots := len(d.Backends) * d.Fleet.MaxConnectionsPerPod
	extra := max(3, slots/2)
	p.intro(d, slots)
	if err := awaitRecovery(ctx, p, d); err != nil {
		return err
	}

	p.step(1, "open connections until the fleet is full and %d more are refused, alternating gateways", extra)
	var open []*websocket.Conn
	defer func() {
		for _, c := range open {
			c.CloseNow()
		}
	}()
	var capacity, other int
	for n := 1; (len(open) < slots || capacity < extra) && n <= slots+extra+20; n++ {
		node := d.Nodes[(n-1)%len(d.Nodes)]
		p.progress("dialing #%d through gateway %s", n, node.name)
		r := dialDemo(ctx, node, n)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.dial(n, node.name, r)
		switch {
		case r.conn != nil:
			open = append(open, r.conn)
		case r.reason == string(store.ReasonCapacity):
			capacity++
		default:
			other++
			if r.reason == string(store.ReasonRateLimit) && r.retryAfter > 0 {
				// A polite client waits as told; so does the demo.
				p.progress("gateway %s is rate-limited: waiting %s as Retry-After says", node.name, r.retryAfter)
				if err := sleepCtx(ctx, r.retryAfter); err != nil {
					return err
				}
			}
		}
	}
	p.line("  => %d admitted (the fleet holds %d = %d pods x cap %d), %d refused for capacity, %d otherwise",
		len(open), slots, len(d.Backends), d.Fleet.MaxConnectionsPerPod, capacity, other)
	if err := awaitLive(ctx, p, d, int64(len(open))); err != nil {
		return err
	}

	if len(open) == 0 {
		return fmt.Errorf("no connection was admitted (%d refused for capacity, %d otherwise)", capacity, other)
	}
	closeN := max(1, len(open)/2)
	p.step(2, "close %d connections and wait for the trackers to release their slots", closeN)
	closed := time.Now()
	for _, c := range open[:closeN] {
		c.Close(websocket.StatusNormalClosure, "demo")
	}
	open = open[closeN:]
	if err := awaitLive(ctx, p, d, int64(len(open))); err != nil {
		return err
	}
	p.line("  released: Redis and the pods both count %d live connections, %s after the close", len(open), time.Since(closed).Round(time.Millisecond))
	node := d.Nodes[1]
	r := dialDemo(ctx, node, 0)
	p.dial(0, node.name, r)
	if r.conn != nil {
		open = append(open, r.conn)
		p.line("  => a freed slot admits again")
	}
	// The scaler counts what the trackers' heartbeats published: wait for
	// the one that carries the new connection before asking it.
	if err := awaitLive(ctx, p, d, int64(len(open))); err != nil {
		return err
	}

	if err := awaitSettle(ctx, p, d); err != nil {
		return err
	}
	metrics, err := askScaler(ctx, p, d)
	if err != nil {
		return err
	}
	p.step(3, "the scaler, asked through KEDA's externalscaler client at %s", d.Scaler.addr)
	p.scaler(metrics, len(d.Backends))
	// After the scaler has answered, so that the scaling view shows its
	// recommendation.
	p.step(4, "wsgate metrics: the operators' view, read from Redis")
	if err := awaitEstablished(ctx, p, d, len(open)); err != nil {
		return err
	}
	cmd, args := d.metricsCommand()
	p.line("  $ %s", cmd)
	if err := metricsTo(ctx, out, args, time.Now); err != nil {
		// A view is a window on the system, not part of it: say what
		// failed and go on with the demo.
		p.line("  the views could not be shown: %v", err)
	}

	if o.scriptOnly {
		return nil
	}
	p.serving(d, len(open), slots)
	<-ctx.Done()
	return nil
}

// demoDial is one client's attempt through a gateway.
type demoDial struct {
	conn       *websocket.Conn
	status     int
	reason     string
	retryAfter time.Duration
	pod, echo  string
	err        error
}

// dialDemo opens a WebSocket through node's gateway and, once admitted,
// sends one message to learn which pod answers.
func dialDemo(ctx context.Context, node *demoNode, n int) demoDial {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, node.URL(), nil)
	var r demoDial
	if resp != nil {
		r.status, r.reason = resp.StatusCode, resp.Header.Get("X-Wsgate-Reason")
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			r.retryAfter = time.Duration(s) * time.Second
		}
		if resp.Body != nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	if err != nil {
		r.err = err
		return r
	}
	msg := "hello #" + strconv.Itoa(n)
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		c.CloseNow()
		r.err = fmt.Errorf("send through the tunnel: %w", err)
		return r
	}
	_, reply, err := c.Read(ctx)
	if err != nil {
		c.CloseNow()
		r.err = fmt.Errorf("read the echo: %w", err)
		return r
	}
	r.conn, r.echo = c, string(reply)
	if pod, _, ok := strings.Cut(r.echo, ": "); ok {
		r.pod = pod
	}
	return r
}

// awaitRecovery sits through the recovery wait of the epoch the trackers'
// first heartbeat created on a fresh Redis: until every instance has had a
// lease to re-publish its connections, Redis admits nobody (the gateways
// would answer 503 recovering).
func awaitRecovery(ctx context.Context, p *demoPrinter, d demoSystem) error {
	left, err := d.Store.Recovery(ctx, d.Fleet.Name)
	if err != nil {
		return fmt.Errorf("read the recovery wait: %w", err)
	}
	if left == 0 {
		return nil // an external Redis whose epoch is older than the wait
	}
	p.line("")
	p.line("Redis' epoch is new: it grants no admission for one instance TTL (%s, by Redis' clock and", demoInstanceTTL)
	p.line("a tracker's own), until every tracker has had a lease to re-publish its connections.")
	p.line("Waiting for it (%s left by Redis' clock).", left.Round(100*time.Millisecond))
	start := time.Now()
	p.progress("waiting for the recovery wait to end")
	wctx, cancel := context.WithTimeout(ctx, demoWait)
	defer cancel()
	if err := d.Store.AwaitRecovery(wctx, d.Fleet.Name); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("await the recovery wait: %w", err)
	}
	p.line("  => recovery wait over after %s: admissions go through Redis", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// awaitLive waits until Redis and the pods themselves both count want live
// connections: releases travel over the gateways' access-log streams, and
// Redis' count is the summary's, what the trackers' heartbeats published
// (tracker/PROTOCOL.md, "The fleet's live count").
func awaitLive(ctx context.Context, p *demoPrinter, d demoSystem, want int64) error {
	start := time.Now()
	deadline := start.Add(demoWait)
	for {
		s, err := d.Store.Summary(ctx, d.Fleet.Name, time.Now())
		var pods int64
		for _, b := range d.Backends {
			pods += b.live.Load()
		}
		if err == nil && s.Live == want && pods == want {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("read the live count: %w", err)
			}
			return fmt.Errorf("live connections: Redis counts %d and the pods %d, want %d after %s", s.Live, pods, want, demoWait)
		}
		p.progress("waiting for the counts to settle at %d: Redis %d, pods %d (%s)", want, s.Live, pods, time.Since(start).Round(100*time.Millisecond))
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// awaitEstablished waits until Redis counts want established connections:
// a tunnel Envoy reported up reaches Redis with its tracker's next heartbeat.
func awaitEstablished(ctx context.Context, p *demoPrinter, d demoSystem, want int) error {
	start := time.Now()
	deadline := start.Add(demoWait)
	for {
		snap, err := d.Store.Snapshot(ctx, d.Fleet.Name, time.Now())
		est := 0
		for _, in := range snap.Instances {
			for _, n := range in.Established {
				est += n
			}
		}
		if err == nil && est == want {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("read the established count: %w", err)
			}
			return fmt.Errorf("established connections: Redis counts %d, want %d after %s", est, want, demoWait)
		}
		p.progress("waiting for the heartbeats to publish the established tunnels: %d of %d (%s)", est, want, time.Since(start).Round(100*time.Millisecond))
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// awaitSettle waits until Redis's epoch is demoSettle old: before, the
// scaler must hold its metrics and readiness says NOT READY.
func awaitSettle(ctx context.Context, p *demoPrinter, d demoSystem) error {
	s, err := d.Store.Summary(ctx, d.Fleet.Name, time.Now())
	if err != nil {
		return fmt.Errorf("read the epoch: %w", err)
	}
	if s.EpochStart().IsZero() {
		return nil // askScaler will say why the scaler holds
	}
	wait := time.Until(s.EpochStart().Add(demoSettle + 10*time.Millisecond))
	if wait <= 0 {
		return nil
	}
	p.progress("waiting %s for the scaler's settle time", wait.Round(time.Millisecond))
	return sleepCtx(ctx, wait)
}

// scalerMetric is one metric as KEDA reads it: spec, then value.
type scalerMetric struct {
	name          scaler.Metric
	value, target float64
}

// askScaler reads desiredReplicas, connections and saturation the way KEDA
// does, waiting out the scaler's settle time on a fresh Redis.
func askScaler(ctx context.Context, p *demoPrinter, d demoSystem) ([]scalerMetric, error) {
	start := time.Now()
	deadline := start.Add(demoWait)
	var out []scalerMetric
	for _, m := range []scaler.Metric{scaler.MetricDesiredReplicas, scaler.MetricConnections, scaler.MetricSaturation} {
		ref := &externalscaler.ScaledObjectRef{Name: "backend", Namespace: "demo", ScalerMetadata: map[string]string{"fleet": d.Fleet.Name, "metric": string(m)}}
		for {
			v, target, err := readMetric(ctx, d.Scaler.keda, ref)
			if err == nil {
				out = append(out, scalerMetric{name: m, value: v, target: target})
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return nil, fmt.Errorf("ask the scaler for %s: %w", m, err)
			}
			// Unavailable while the epoch is younger than the settle time.
			p.progress("waiting for the scaler to trust the counts (%s)", time.Since(start).Round(100*time.Millisecond))
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func readMetric(ctx context.Context, keda externalscaler.ExternalScalerClient, ref *externalscaler.ScaledObjectRef) (value, target float64, err error) {
	spec, err := keda.GetMetricSpec(ctx, ref)
	if err != nil {
		return 0, 0, err
	}
	if len(spec.MetricSpecs) != 1 {
		return 0, 0, fmt.Errorf("GetMetricSpec: %d metric specs, want 1", len(spec.MetricSpecs))
	}
	res, err := keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref, MetricName: spec.MetricSpecs[0].MetricName})
	if err != nil {
		return 0, 0, err
	}
	if len(res.MetricValues) != 1 {
		return 0, 0, fmt.Errorf("GetMetrics: %d values, want 1", len(res.MetricValues))
	}
	return res.MetricValues[0].MetricValueFloat, spec.MetricSpecs[0].TargetSizeFloat, nil
}
