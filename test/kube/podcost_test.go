package kube_test

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/wsgate/wsgate/scaler/podcost"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/tracker"
)

// The deletion-cost hook's cases on the real control plane, with the
// chart's Role (or one verb less): the floor it learns from the fleet's
// ScaledObject, scale to zero, undrain, and a forbidden patch.

// quickBehavior lets the test's HPA act within a second of a lower
// metric: a 1 s window, any number of pods per second.
var quickBehavior = &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleDown: &autoscalingv2.HPAScalingRules{
	StabilizationWindowSeconds: ptr.To[int32](1),
	Policies:                   []autoscalingv2.HPAScalingPolicy{{Type: autoscalingv2.PercentScalingPolicy, Value: 100, PeriodSeconds: 1}},
}}

// negativeCosts are the pods whose pod-deletion-cost the API server shows
// as a drain cost (below 0).
func negativeCosts(c map[string]string) []string {
	var out []string
	for name, v := range c {
		if n, err := strconv.Atoi(v); err == nil && n < 0 {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// admitAll admits n connections through tr and fails on any refusal.
func admitAll(ctx context.Context, t *testing.T, tr *tracker.Tracker, n int) {
	t.Helper()
	for i := range n {
		res, err := tr.Admit(ctx, fleet)
		noErr(t, err)
		if !res.Admitted {
			t.Fatalf("admission %d of %d refused: %+v", i+1, n, res)
		}
	}
}

// TestIdleFleetDrainsNothingAtItsMinimum: an idle fleet of five pods whose
// ScaledObject has minReplicaCount 3. The policy recommends 0; the hook,
// reading the ScaledObject with the chart's Role, drains only the two pods
// above the minimum, and once the HPA has taken the fleet to three pods it
// drains nothing, removes the costs it set, and a real tracker's
// admissions find pods (no no_pods).
func TestIdleFleetDrainsNothingAtItsMinimum(t *testing.T) {
	const minimum = 3
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := fleetSetup{replicas: 5, cap: 10, scaledObject: true, min: minimum, behavior: quickBehavior,
		hook: []podcost.Option{podcost.WithSettle(500 * time.Millisecond)}}.start(ctx, t)
	tr := startTracker(ctx, t, e.store, e.fleets, "envoy-1")
	e.awaitReady(ctx, t, fleet, 5)

	// The HPA from 5 to the minimum.
	h := &hpa{down: *quickBehavior.ScaleDown, sync: 250 * time.Millisecond, min: minimum}
	current, drained := int32(5), map[string]bool{}
	err := wait.PollUntilContextTimeout(ctx, h.sync, time.Minute, true, func(context.Context) (bool, error) {
		reported := e.desired(ctx, t, fleet)
		draining := e.draining(ctx, t, fleet)
		ready := len(e.ready(ctx, t, fleet))
		if len(draining) > max(ready-minimum, 0) {
			t.Fatalf("%d of %d ready pods draining (%v): the minimum is %d", len(draining), ready, draining, minimum)
		}
		for p := range draining {
			drained[p] = true
		}
		if next := h.next(time.Now(), current, int32(reported)); next != current {
			scale(ctx, t, e.a, fleet, next)
			current = next
		}
		return current == minimum, nil
	})
	if err != nil {
		t.Fatalf("the HPA never took the fleet to its minimum: %v (at %d)", err, current)
	}
	kept := awaitPods(ctx, t, e.a, fleet, minimum)
	for _, p := range kept {
		if drained[p.Name] {
			t.Errorf("pod %s was drained and kept", p.Name)
		}
	}
	if len(drained) != 5-minimum {
		t.Errorf("%d pods drained (%v); want the %d above the minimum", len(drained), drained, 5-minimum)
	}

	// At the minimum: nothing drains, and the costs of the scale-down go
	// (once a pod may be patched again).
	e.awaitReady(ctx, t, fleet, minimum)
	start := time.Now()
	err = wait.PollUntilContextTimeout(ctx, h.sync, time.Minute, true, func(context.Context) (bool, error) {
		if r := e.desired(ctx, t, fleet); r != 0 {
			t.Fatalf("idle at the minimum the scaler reported %d; want the recommendation, 0 (the HPA keeps %d)", r, minimum)
		}
		if d := e.draining(ctx, t, fleet); len(d) > 0 {
			t.Fatalf("at the minimum, pods draining: %v", d)
		}
		c := costs(ctx, t, e.a, fleet)
		if n := negativeCosts(c); len(n) > 0 {
			t.Fatalf("at the minimum, pods with a drain cost: %v", n)
		}
		return len(c) == 0 && time.Since(start) > 2*time.Second, nil
	})
	if err != nil {
		t.Fatalf("costs never removed at the minimum: %v (%v)", err, costs(ctx, t, e.a, fleet))
	}
	if v := testutil.ToFloat64(e.metrics.Draining.WithLabelValues(fleet)); v != 0 {
		t.Errorf("wsgate_scaler_podcost_draining_pods %v at the minimum; want 0", v)
	}
	admitAll(ctx, t, tr, 2*minimum)
	if n := e.snapshot(ctx, t, fleet).Rejections[store.ReasonNoPods]; n != (store.Windows{}) {
		t.Errorf("no_pods rejections %+v; want none", n)
	}
}

// TestScaleToZeroKeepsTheLastPodPlaceable: minReplicaCount 0. KEDA gives
// its HPA minReplicas 1 and removes the last pod itself, on deactivation,
// once IsActive has been false for its cooldownPeriod. An idle fleet of
// three: the hook drains the two pods the HPA removes and never the last
// one, so a client arriving during the cooldown is admitted (no no_pods,
// and no second pod asked for). Once it left and KEDA deactivated the
// fleet, the next admission is refused no_pods, which activates the fleet
// again; KEDA scales it to one pod, which admits.
func TestScaleToZeroKeepsTheLastPodPlaceable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := fleetSetup{replicas: 3, cap: 10, scaledObject: true, min: 0, behavior: quickBehavior,
		hook: []podcost.Option{podcost.WithSettle(500 * time.Millisecond)}}.start(ctx, t)
	tr := startTracker(ctx, t, e.store, e.fleets, "envoy-1")
	e.awaitReady(ctx, t, fleet, 3)

	// The HPA, floored at KEDA's minReplicas 1, from 3 to 1.
	h := &hpa{down: *quickBehavior.ScaleDown, sync: 250 * time.Millisecond, min: 1}
	current := int32(3)
	err := wait.PollUntilContextTimeout(ctx, h.sync, time.Minute, true, func(context.Context) (bool, error) {
		reported := e.desired(ctx, t, fleet)
		if d, ready := e.draining(ctx, t, fleet), len(e.ready(ctx, t, fleet)); len(d) > max(ready-1, 0) {
			t.Fatalf("%d of %d ready pods draining (%v): KEDA's HPA keeps one pod until the fleet is deactivated", len(d), ready, d)
		}
		if e.active(ctx, t, fleet) {
			t.Fatal("IsActive true for an idle fleet")
		}
		if next := h.next(time.Now(), current, int32(reported)); next != current {
			scale(ctx, t, e.a, fleet, next)
			current = next
		}
		return current == 1, nil
	})
	if err != nil {
		t.Fatalf("the HPA never took the idle fleet to one pod: %v (at %d)", err, current)
	}
	awaitPods(ctx, t, e.a, fleet, 1)
	e.awaitReady(ctx, t, fleet, 1)

	// KEDA's cooldown: a client comes, is admitted, and leaves.
	res, err := tr.Admit(ctx, fleet)
	noErr(t, err)
	if !res.Admitted {
		t.Fatalf("admission during the cooldown: %+v; want admitted on the last pod", res)
	}
	// The scaler counts what the heartbeats published (PROTOCOL.md, "The
	// fleet's live count"): this one carries the connection.
	noErr(t, tr.Heartbeat(ctx))
	if r := e.desired(ctx, t, fleet); r != 1 {
		t.Fatalf("one connection on one pod: the scaler reported %d; want 1", r)
	}
	if !e.active(ctx, t, fleet) {
		t.Fatal("IsActive false with a live connection")
	}
	noErr(t, tr.Release(ctx, res.Conn))
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return !e.active(ctx, t, fleet), nil
	}); err != nil {
		t.Fatalf("the fleet never went idle again: %v", err)
	}

	// KEDA deactivates the fleet: zero pods.
	scale(ctx, t, e.a, fleet, 0)
	awaitPods(ctx, t, e.a, fleet, 0)
	e.awaitReady(ctx, t, fleet, 0)
	res, err = tr.Admit(ctx, fleet)
	noErr(t, err)
	if res.Admitted || res.Reason != store.ReasonNoPods {
		t.Fatalf("admission at zero pods: %+v; want refused no_pods", res)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return e.active(ctx, t, fleet), nil
	}); err != nil {
		t.Fatalf("the no_pods rejection never made the fleet active: %v", err)
	}
	// KEDA activates it: one pod, then the HPA follows the metric.
	scale(ctx, t, e.a, fleet, 1)
	e.awaitReady(ctx, t, fleet, 1)
	if r := e.desired(ctx, t, fleet); r < 1 {
		t.Fatalf("after the wake-up the scaler reported %d; want at least 1", r)
	}
	if d := e.draining(ctx, t, fleet); len(d) > 0 {
		t.Fatalf("after the wake-up pods draining: %v", d)
	}
	admitAll(ctx, t, tr, 1)
}

// TestRisingLoadUndrainsAndRemovesTheCosts: six pods, 8 connections: the
// hook drains the five emptiest and the API server shows their drain
// costs. The load rises to 50 before the HPA acts: the very next poll
// reports the scale-up (7) with no pod draining, and the costs go from
// every pod, as the API server shows, so a later scale-down the hook does
// not prepare is not steered by them.
func TestRisingLoadUndrainsAndRemovesTheCosts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	chart := chartValues(t)
	e := fleetSetup{replicas: 6, cap: 10, scaledObject: true, min: 1, behavior: chart.Behavior,
		hook: []podcost.Option{podcost.WithSettle(chart.Settle)}}.start(ctx, t)
	pods := e.awaitReady(ctx, t, fleet, 6)
	low, high := map[string]int{}, map[string]int{}
	for i, p := range pods {
		low[p.Addr] = []int{3, 2, 1, 1, 1, 0}[i]
		high[p.Addr] = 8 + i%2*2 // 8 or 10: 54
	}
	setLoad(ctx, t, e.store, fleet, 1, low)
	e.awaitSettled(ctx, t, fleet) // the first heartbeat made the epoch

	var drainCosts []string
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		e.desired(ctx, t, fleet)
		drainCosts = negativeCosts(costs(ctx, t, e.a, fleet))
		return len(e.draining(ctx, t, fleet)) == 5 && len(drainCosts) == 5, nil
	}); err != nil {
		t.Fatalf("the drain of five pods never showed in Redis and the API server: %v (costs %v)", err, costs(ctx, t, e.a, fleet))
	}

	setLoad(ctx, t, e.store, fleet, 2, high)
	undrained := time.Now()
	if r := e.desired(ctx, t, fleet); r != 7 {
		t.Fatalf("the first poll after the load rose to 54 reported %d; want 7 at once", r)
	}
	if d := e.draining(ctx, t, fleet); len(d) > 0 {
		t.Fatalf("after the load rose, pods still draining: %v", d)
	}
	scale(ctx, t, e.a, fleet, 7)
	e.awaitReady(ctx, t, fleet, 7)
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		if r := e.desired(ctx, t, fleet); r < 7 {
			t.Fatalf("at 54 connections the scaler reported %d; want 7", r)
		}
		return len(costs(ctx, t, e.a, fleet)) == 0, nil
	}); err != nil {
		t.Fatalf("the costs were never removed after the undrain: %v (%v)", err, costs(ctx, t, e.a, fleet))
	}
	t.Logf("drained %v; undrained at the first poll after the rise, every cost removed %s later",
		drainCosts, time.Since(undrained).Round(time.Millisecond))
}

// TestRoleWithoutPatchHoldsTheScaleDownNotTheScaleUp: the chart's Role
// without patch on pods. The hook's patches are Forbidden, counted as
// such; the scaler keeps reporting the ready pods (no scale-down released)
// well past the settle delay, and the API server shows no cost. A rising
// load is reported at once and the scale-up happens.
func TestRoleWithoutPatchHoldsTheScaleDownNotTheScaleUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var rules []rbacv1.PolicyRule
	for _, r := range chartRole(t) {
		r.Verbs = slices.DeleteFunc(slices.Clone(r.Verbs), func(v string) bool { return v == "patch" && slices.Contains(r.Resources, "pods") })
		rules = append(rules, r)
	}
	const settle = 500 * time.Millisecond
	e := fleetSetup{rules: rules, replicas: 4, cap: 10, scaledObject: true, min: 1,
		hook: []podcost.Option{podcost.WithSettle(settle), podcost.WithBackoff(100*time.Millisecond, time.Second)}}.start(ctx, t)
	pods := e.awaitReady(ctx, t, fleet, 4)
	low := map[string]int{}
	for i, p := range pods {
		low[p.Addr] = []int{2, 1, 0, 0}[i]
	}
	setLoad(ctx, t, e.store, fleet, 1, low)
	e.awaitSettled(ctx, t, fleet) // the first heartbeat made the epoch

	forbidden := e.metrics.Patches.WithLabelValues(fleet, "forbidden")
	var firstRefusal time.Time
	polls := 0
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		if r := e.desired(ctx, t, fleet); r != 4 {
			t.Fatalf("with every patch forbidden the scaler reported %d; want the 4 ready pods (held)", r)
		}
		if firstRefusal.IsZero() && testutil.ToFloat64(forbidden) > 0 {
			firstRefusal = time.Now()
		}
		polls++
		return !firstRefusal.IsZero() && time.Since(firstRefusal) > 4*settle, nil
	}); err != nil {
		t.Fatalf("no patch was refused: %v", err)
	}
	if n := testutil.ToFloat64(forbidden); n < 4 {
		t.Errorf("%v forbidden patches counted; want at least one per pod (4)", n)
	}
	if v := testutil.ToFloat64(e.metrics.Holding.WithLabelValues(fleet)); v != 1 {
		t.Errorf("wsgate_scaler_podcost_holding %v while held; want 1", v)
	}
	if c := costs(ctx, t, e.a, fleet); len(c) > 0 {
		t.Errorf("costs %v on pods the scaler may not patch", c)
	}
	refused := testutil.ToFloat64(forbidden)

	high := map[string]int{}
	for _, p := range pods {
		high[p.Addr] = 10 // 40 connections: 5 pods
	}
	setLoad(ctx, t, e.store, fleet, 2, high)
	if r := e.desired(ctx, t, fleet); r != 5 {
		t.Fatalf("the first poll after the load rose to 40 reported %d; want 5 at once", r)
	}
	scale(ctx, t, e.a, fleet, 5)
	e.awaitReady(ctx, t, fleet, 5)
	if r := e.desired(ctx, t, fleet); r != 5 {
		t.Fatalf("after the scale-up the scaler reported %d; want 5", r)
	}
	t.Logf("held at 4 over %d polls (%s past the first refusal), %v patches forbidden; the scale-up to 5 went at the first poll",
		polls, (4 * settle).String(), refused)
}
