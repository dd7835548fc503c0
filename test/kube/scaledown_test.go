package kube_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler/podcost"
)

const (
	ns    = "apps"
	fleet = "chat"
)

// chartRole is the Role charts/wsgate renders for the scaler: its rules
// are plain YAML in the template.
func chartRole(t *testing.T) []rbacv1.PolicyRule {
	t.Helper()
	b, err := os.ReadFile("../../charts/wsgate/templates/scaler-rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	s = s[strings.Index(s, "rules:"):]
	s = s[:strings.Index(s, "---")]
	var r struct{ Rules []rbacv1.PolicyRule }
	if err := yaml.Unmarshal([]byte(s), &r); err != nil {
		t.Fatal(err)
	}
	return r.Rules
}

// kubelet plays the node: binds the fleet's pods, runs them (Running,
// Ready, an IP from TEST-NET-1, which nothing dials) and deletes them
// once they get a deletionTimestamp.
func kubelet(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	next := 10
	ips := map[string]string{}
	handle := func(p *corev1.Pod) {
		switch {
		case p.DeletionTimestamp != nil:
			c.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		case p.Spec.NodeName == "":
			c.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name},
				Target: corev1.ObjectReference{Kind: "Node", Name: "node-1"}}, metav1.CreateOptions{})
		case p.Status.Phase != corev1.PodRunning:
			mu.Lock()
			ip, ok := ips[p.Name]
			if !ok {
				ip = fmt.Sprintf("192.0.2.%d", next)
				next++
				ips[p.Name] = ip
			}
			mu.Unlock()
			p = p.DeepCopy()
			now := metav1.Now()
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &now,
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
			c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		}
	}
	f := informers.NewSharedInformerFactoryWithOptions(c, 0, informers.WithNamespace(ns))
	f.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { handle(o.(*corev1.Pod)) },
		UpdateFunc: func(_, o any) { handle(o.(*corev1.Pod)) },
	})
	f.Start(ctx.Done())
	t.Cleanup(f.Shutdown)
}

// TestScaleDownDeletesTheEmptiestPods: ten pods under mixed load, the
// recommendation falls to five; the hook, with the chart's Role through a
// ServiceAccount token, prepares the scale-down and the real ReplicaSet
// controller deletes exactly the five emptiest. The baseline, a plain
// HPA's scale-down of the same load without the hook, is measured beside
// it on three more Deployments: the ReplicaSet controller then picks among
// equally ready pods by its own tie-break, blind to connections.
func TestScaleDownDeletesTheEmptiestPods(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// 29 connections at cap 8 (8 × 0.8 per pod): the policy wants 5 pods.
	// The ScaledObject's 1 s window: the hook holds the rest of the settle.
	// (Without a readable ScaledObject it would hold the scale-down.)
	s := fleetSetup{replicas: 10, cap: 8, scaledObject: true, min: 1, behavior: quickBehavior,
		hook: []podcost.Option{podcost.WithSettle(2 * time.Second)}}.start(ctx, t)
	a := s.a
	loads := []int{5, 0, 3, 1, 7, 2, 0, 4, 6, 1}
	plain := []string{"plain-1", "plain-2", "plain-3"}
	for _, p := range plain {
		backend(ctx, t, a, p, 10)
	}
	pods := s.awaitReady(ctx, t, fleet, 10)
	live, load := map[string]int{}, map[string]int{}
	for i, p := range pods {
		live[p.Addr], load[p.Name] = loads[i], loads[i]
	}
	setLoad(ctx, t, s.store, fleet, 1, live)
	sorted := append([]int(nil), loads...)
	sort.Ints(sorted)
	minCut := 0
	for _, n := range sorted[:5] {
		minCut += n
	}

	// The HPA's side: poll the scaler until it reports 5, then scale.
	start := time.Now()
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return s.desired(ctx, t, fleet) == 5, nil
	}); err != nil {
		t.Fatalf("the hook never released the scale-down: %v", err)
	}
	held := time.Since(start)
	scale(ctx, t, a, fleet, 5)
	left := awaitPods(ctx, t, a, fleet, 5)
	kept := map[string]bool{}
	for _, p := range left {
		kept[p.Name] = true
	}
	cut := 0
	for _, p := range pods {
		if !kept[p.Name] {
			cut += load[p.Name]
		}
	}
	if cut != minCut {
		t.Errorf("the scale-down cut %d connections (kept %v of loads %v by pod name); the five emptiest hold %d", cut, left, loads, minCut)
	}

	// The baseline: the same load on pods nobody prepared.
	var plainCuts []int
	for _, name := range plain {
		before := awaitPods(ctx, t, a, name, 10)
		scale(ctx, t, a, name, 5)
		kept := map[string]bool{}
		for _, p := range awaitPods(ctx, t, a, name, 5) {
			kept[p.Name] = true
		}
		n := 0
		for i, p := range before {
			if !kept[p.Name] {
				n += loads[i]
			}
		}
		plainCuts = append(plainCuts, n)
	}
	t.Logf("scale-down 10 -> 5 of loads %v: with the hook cut %d connections (minimum %d), held %s; without it cut %v",
		loads, cut, minCut, held.Round(time.Millisecond), plainCuts)
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// TestStepwiseScaleDownFollowsTheChartPolicy: the chart's HPA behaviour
// (a 300 s stabilization window, then one pod a minute), 60 times faster,
// played on the scale subresource from the scaler's metric, takes ten
// pods under mixed load down to the four the policy wants, one step at a
// time. The hook releases the scale-down once, as soon as its costs are
// observed (the window covers the chart's settle delay), and holds none of
// the steps, which would restart the window each time; at every poll the
// pods draining are exactly the emptiest pods still there, so each step
// removes one of them and the kept pods never drain.
func TestStepwiseScaleDownFollowsTheChartPolicy(t *testing.T) {
	const speed = 60
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	chart := chartValues(t)
	behavior := scaledBehavior(chart.Behavior, speed)
	// 29 connections at cap 10 (8 per pod): the policy wants 4 pods.
	s := fleetSetup{replicas: 10, cap: 10, scaledObject: true, min: 1, behavior: behavior,
		hook: []podcost.Option{podcost.WithSettle(chart.Settle / speed)}}.start(ctx, t)
	a, store := s.a, s.store
	pods := s.awaitReady(ctx, t, fleet, 10)
	loads := []int{5, 0, 3, 1, 7, 2, 0, 4, 6, 1}
	live, load := map[string]int{}, map[string]int{}
	for i, p := range pods {
		live[p.Addr], load[p.Name] = loads[i], loads[i]
	}
	byLoad := append([]fleets.Pod(nil), pods...)
	sort.SliceStable(byLoad, func(i, j int) bool { return load[byLoad[i].Name] < load[byLoad[j].Name] })
	emptiest, minCut := map[string]bool{}, 0
	for _, p := range byLoad[:6] {
		emptiest[p.Name] = true
		minCut += load[p.Name]
	}

	// Until now the fleet needed its ten pods (75 connections): the HPA
	// has seen 10, which its window remembers when the load falls.
	h := &hpa{down: *behavior.ScaleDown, sync: 15 * time.Second / speed, min: 1}
	full := map[string]int{}
	for _, p := range pods {
		full[p.Addr] = 7 + len(full)%2
	}
	setLoad(ctx, t, store, fleet, 1, full)
	if d := s.desired(ctx, t, fleet); h.next(time.Now(), 10, int32(d)) != 10 {
		t.Fatalf("at 75 connections the scaler reported %d: want 10", d)
	}
	setLoad(ctx, t, store, fleet, 2, live)
	tick := time.NewTicker(h.sync)
	defer tick.Stop()
	start := time.Now()
	var released time.Duration // when the scaler first reported 4
	var steps []time.Duration  // when the HPA lowered the replicas
	current := int32(10)
	for present := 10; current > 4 || present > 4; {
		reported := s.desired(ctx, t, fleet)
		now := time.Now()
		switch {
		case reported == 4 && released == 0:
			released = now.Sub(start)
		case reported != 4 && released != 0:
			t.Fatalf("after %s the scaler reported %d again, having released the scale-down to 4 at %s: a step was held",
				now.Sub(start).Round(time.Millisecond), reported, released.Round(time.Millisecond))
		case reported != 4 && reported != 10:
			t.Fatalf("the scaler reported %d: want 10 (held) or 4", reported)
		}
		// Draining first, then the pods: a pod drained then deleted is
		// gone from the list, never the other way round.
		draining := s.draining(ctx, t, fleet)
		l, err := a.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + fleet})
		noErr(t, err)
		present = 0
		for _, p := range l.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			present++
			if draining[p.Name] != emptiest[p.Name] {
				t.Fatalf("after %s: pod %s (%d connections) draining %v; want exactly the emptiest pods still there draining (%v)",
					now.Sub(start).Round(time.Millisecond), p.Name, load[p.Name], draining[p.Name], draining)
			}
		}
		if next := h.next(now, current, int32(reported)); next != current {
			scale(ctx, t, a, fleet, next)
			current = next
			steps = append(steps, now.Sub(start))
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("the scale-down never reached 4 pods: at %d replicas, %d pods", current, present)
		}
	}
	cut := 0
	kept := map[string]bool{}
	for _, p := range awaitPods(ctx, t, a, fleet, 4) {
		kept[p.Name] = true
		if emptiest[p.Name] {
			t.Errorf("pod %s with %d connections was kept; one of the six emptiest", p.Name, load[p.Name])
		}
	}
	for _, p := range pods {
		if !kept[p.Name] {
			cut += load[p.Name]
		}
	}
	if len(steps) != 6 {
		t.Errorf("%d scale-down steps %v; the chart's policy removes one pod per period, 6 in all", len(steps), steps)
	}
	t.Logf("10 -> 4 pods at 1/%d of the chart's timings (window %ds, one pod per %ds): the hook released after %s, steps at %v; cut %d connections (minimum %d)",
		speed, *behavior.ScaleDown.StabilizationWindowSeconds, behavior.ScaleDown.Policies[0].PeriodSeconds,
		released.Round(time.Millisecond), roundAll(steps), cut, minCut)
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(10 * time.Millisecond)
	}
	return out
}
