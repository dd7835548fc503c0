package kube_test

import (
	"math"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/utils/ptr"
)

// There is no HPA controller in kube-controller-manager's --controllers
// here (it needs the metrics APIs KEDA serves), so the tests play it: hpa
// is the HorizontalPodAutoscaler's arithmetic for one KEDA external
// trigger (metricType AverageValue, target 1: the scaler's desiredReplicas
// metric), as k8s.io/kubernetes/pkg/controller/podautoscaler computes it:
// the 10 % tolerance, the scale-down stabilization window and the
// scale-down policies (stabilizeRecommendationWithBehaviors,
// calculateScaleDownLimitWithBehaviors). Scale-ups go straight to the
// metric (the tests never meet the chart's scale-up limits). Time-scaled
// tests give it a scaledBehavior and a sync period divided alike.
type hpa struct {
	down autoscalingv2.HPAScalingRules
	sync time.Duration // --horizontal-pod-autoscaler-sync-period, 15 s unscaled
	min  int32

	recs    []hpaEvent // recommendations before stabilization
	removed []hpaEvent // scale-down events: pods removed
}

type hpaEvent struct {
	n  int32
	at time.Time
}

func seconds(s int32) time.Duration { return time.Duration(s) * time.Second }

// scaledBehavior is b with every window and period divided by speed,
// rounded up to whole seconds (as the API stores them), at least 1 s.
func scaledBehavior(b *autoscalingv2.HorizontalPodAutoscalerBehavior, speed float64) *autoscalingv2.HorizontalPodAutoscalerBehavior {
	b = b.DeepCopy()
	sec := func(s int32) int32 { return max(int32(math.Ceil(float64(s)/speed)), 1) }
	for _, r := range []*autoscalingv2.HPAScalingRules{b.ScaleUp, b.ScaleDown} {
		if r == nil {
			continue
		}
		if w := r.StabilizationWindowSeconds; w != nil && *w > 0 {
			r.StabilizationWindowSeconds = ptr.To(sec(*w))
		}
		for i := range r.Policies {
			r.Policies[i].PeriodSeconds = sec(r.Policies[i].PeriodSeconds)
		}
	}
	return b
}

// next is the replica count the HPA sets at now, with current replicas and
// the scaler reporting metric.
func (h *hpa) next(now time.Time, current, metric int32) int32 {
	desired := metric
	if r := float64(metric) / float64(current); current > 0 && math.Abs(1-r) <= 0.1 {
		desired = current // within the tolerance
	}
	// Stabilization: the highest recommendation of the window.
	cutoff := now.Add(-seconds(ptr.Deref(h.down.StabilizationWindowSeconds, 300)))
	stable := desired
	for _, r := range h.recs {
		if r.at.After(cutoff) {
			stable = max(stable, r.n)
		}
	}
	h.recs = append(h.recs, hpaEvent{desired, now})
	if desired >= current {
		return max(desired, h.min)
	}
	target := min(stable, current)
	// The policies: what each allows removing in its period; Min selects
	// the smallest change, Max (the default) the largest.
	limit := int32(math.MaxInt32)
	pick := func(a, b int32) int32 { return min(a, b) }
	switch ptr.Deref(h.down.SelectPolicy, autoscalingv2.MaxChangePolicySelect) {
	case autoscalingv2.DisabledPolicySelect:
		return current
	case autoscalingv2.MinChangePolicySelect:
		limit, pick = math.MinInt32, func(a, b int32) int32 { return max(a, b) }
	}
	for _, p := range h.down.Policies {
		start := current
		for _, e := range h.removed {
			if e.at.After(now.Add(-seconds(p.PeriodSeconds))) {
				start += e.n
			}
		}
		proposed := start - p.Value
		if p.Type == autoscalingv2.PercentScalingPolicy {
			proposed = int32(float64(start) * (1 - float64(p.Value)/100))
		}
		limit = pick(limit, proposed)
	}
	target = max(target, min(limit, current), h.min)
	if target < current {
		h.removed = append(h.removed, hpaEvent{current - target, now})
	}
	return target
}
