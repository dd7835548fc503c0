package kube_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/wsgate/wsgate/scaler/podcost"
)

// TestUnreadableScaledObjectDrainsNothingTheHPAKeeps: the case found on a
// real control plane. An idle fleet of ten pods whose ScaledObject has
// minReplicaCount 4, and a Role without scaledobjects.keda.sh: the hook
// cannot know the floor. It used to assume one pod, drain nine and report
// the idle recommendation, while the HPA kept four pods of which three
// drained, refusing new connections for good. Now, at every poll, no pod
// the HPA keeps (max(reported, its minimum)) is draining: the hook holds
// the ten and drains none. Once the Role allows the read, the hook drains
// exactly the six above the minimum and the HPA removes exactly those.
func TestUnreadableScaledObjectDrainsNothingTheHPAKeeps(t *testing.T) {
	const minimum = 4
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	full := chartRole(t)
	var rules []rbacv1.PolicyRule
	for _, r := range full {
		if !slices.Contains(r.APIGroups, "keda.sh") {
			rules = append(rules, r)
		}
	}
	if len(rules) == len(full) {
		t.Fatal("the chart's Role has no keda.sh rule to take away")
	}
	const settle = 500 * time.Millisecond
	e := fleetSetup{rules: rules, replicas: 10, cap: 10, scaledObject: true, min: minimum, behavior: quickBehavior,
		hook: []podcost.Option{podcost.WithSettle(settle)}}.start(ctx, t)
	startTracker(ctx, t, e.store, e.fleets, "envoy-1") // heartbeats: the scaler answers
	e.awaitReady(ctx, t, fleet, 10)

	h := &hpa{down: *quickBehavior.ScaleDown, sync: 250 * time.Millisecond, min: minimum}
	current, drained := int32(10), map[string]bool{}
	// poll plays one HPA sync and checks the drain. Floor unknown, no pod
	// the reported number keeps (max(reported, the HPA's minimum)) may
	// drain; floor known, the hook drains before it reports the lower
	// number (that is its preparation), never below the minimum.
	poll := func(floorKnown bool) {
		reported := e.desired(ctx, t, fleet)
		draining := e.draining(ctx, t, fleet)
		ready := len(e.ready(ctx, t, fleet))
		if kept := max(reported, minimum); !floorKnown && len(draining) > max(ready-kept, 0) {
			t.Fatalf("reported %d with %d ready, the HPA keeps %d, and %d pods draining (%v): a kept pod refuses connections",
				reported, ready, kept, len(draining), draining)
		}
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
	}

	holding := e.metrics.Holding.WithLabelValues(fleet)
	var since time.Time
	if err := wait.PollUntilContextTimeout(ctx, h.sync, time.Minute, true, func(context.Context) (bool, error) {
		poll(false)
		if since.IsZero() && testutil.ToFloat64(holding) == 1 {
			since = time.Now()
		}
		return !since.IsZero() && time.Since(since) > 10*settle, nil
	}); err != nil {
		t.Fatalf("the hook never held the scale-down: %v", err)
	}
	if current != 10 || len(drained) > 0 {
		t.Fatalf("with the ScaledObject unreadable the fleet went to %d pods and %v drained; want 10 held, none drained", current, drained)
	}

	// The Role allows the read: the hook learns the minimum (its list
	// error is kept for 10 s) and the scale-down goes to it.
	role, err := e.a.RbacV1().Roles(ns).Get(ctx, "wsgate-scaler", metav1.GetOptions{})
	noErr(t, err)
	role.Rules = full
	_, err = e.a.RbacV1().Roles(ns).Update(ctx, role, metav1.UpdateOptions{})
	noErr(t, err)
	if err := wait.PollUntilContextTimeout(ctx, h.sync, time.Minute, true, func(context.Context) (bool, error) {
		poll(true)
		return current == minimum, nil
	}); err != nil {
		t.Fatalf("once the ScaledObject was readable the HPA never took the fleet to its minimum: %v (at %d)", err, current)
	}
	for _, p := range awaitPods(ctx, t, e.a, fleet, minimum) {
		if drained[p.Name] {
			t.Errorf("pod %s was drained and kept", p.Name)
		}
	}
	if len(drained) != 10-minimum {
		t.Errorf("%d pods drained (%v); want the %d above the minimum", len(drained), drained, 10-minimum)
	}
}
