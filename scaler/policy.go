package scaler

import (
	"math"
	"time"
)

// Params are the policy's knobs, set per trigger from its metadata.
type Params struct {
	// TargetUtilization is the share of the cap a pod should hold on
	// average, in (0, 1]. Default 0.8.
	TargetUtilization float64
	// Headroom is the extra capacity, as a fraction of live connections,
	// kept while the 1 h window shows repeated pressure. Default 0.25.
	Headroom float64
	// HeadroomAfter is how many capacity/no_pods rejections in the 1 h
	// window count as repeated pressure. Default 10.
	HeadroomAfter int64
	// Guard is the window during which any capacity/no_pods rejection
	// forbids a scale-down: 5m, 15m (default) or 1h; 0 disables it.
	Guard time.Duration
}

// DefaultParams are the documented defaults (POLICY.md).
var DefaultParams = Params{TargetUtilization: 0.8, Headroom: 0.25, HeadroomAfter: 10, Guard: 15 * time.Minute}

// Input is one fleet's state as the policy sees it.
type Input struct {
	// Cap is the fleet's maxConnectionsPerPod.
	Cap int
	// RetryAfter is the Retry-After the tracker gives rejected clients: a
	// waiting client is counted once per RetryAfter.
	RetryAfter time.Duration
	// Live is the number of live connections of the fleet.
	Live int64
	// Pods counts the registry (starting pods included), Ready its ready
	// pods, Placeable the ready pods that are not draining.
	Pods, Ready, Placeable int64
	// Pressure holds the capacity + no_pods rejections in 5 min, 15 min, 1 h.
	Pressure Window
}

// Window is a rejection count over the last 5 min, 15 min and 1 h.
type Window struct{ M5, M15, H1 int64 }

// in returns the count of the window w (5m, 15m or 1h).
func (w Window) in(d time.Duration) int64 {
	switch {
	case d <= 0:
		return 0
	case d <= 5*time.Minute:
		return w.M5
	case d <= 15*time.Minute:
		return w.M15
	}
	return w.H1
}

// Decision is the policy's recommendation and why.
type Decision struct {
	Replicas int64
	// Reason is a short text for operators (the scaler hash, logs).
	Reason string
}

// Decide recommends a replica count for a fleet. It is a pure function of
// its arguments:
//
//	perPod   = Cap × TargetUtilization
//	           ÷ (1 + Headroom) when the 1 h window holds ≥ HeadroomAfter rejections
//	waiting  = Pressure.M5 × RetryAfter ÷ 5 min   (clients retrying every RetryAfter)
//	need     = ceil((Live + waiting) ÷ perPod)
//	scale-up:  if Pressure.M5 > 0 and every placeable pod is at the cap
//	           (Live ≥ Placeable × Cap, which holds at zero pods),
//	           need = max(need, Ready + 1)
//	guard:     if the Guard window holds any rejection, need = max(need, Pods)
//
// Rejections are those of reasons capacity and no_pods only: rate_limit is
// Envoy's own limit, redis_down the tracker's fallback and recovering the
// recovery wait after Redis lost its state, none is fixed by more backend
// pods (POLICY.md: a recovery wait is not demand). The scale-up step is relative to ready pods, so a
// pod that is still starting (counted in Pods, not Ready) is not asked for
// twice while the 5 min window still remembers the pressure.
func Decide(p Params, in Input) Decision {
	perPod := float64(in.Cap) * p.TargetUtilization
	reason := "capacity target"
	if p.HeadroomAfter > 0 && in.Pressure.H1 >= p.HeadroomAfter {
		perPod /= 1 + p.Headroom
		reason = "capacity target with headroom (repeated pressure in 1h)"
	}
	var waiting float64
	if in.Pressure.M5 > 0 {
		waiting = float64(in.Pressure.M5) * in.RetryAfter.Seconds() / (5 * time.Minute).Seconds()
	}
	need := int64(0)
	if perPod > 0 {
		// A tolerance keeps 1.6/0.8 from becoming 3 through rounding.
		need = int64(math.Ceil((float64(in.Live)+waiting)/perPod - 1e-9))
	}
	if in.Pressure.M5 > 0 && in.Live >= in.Placeable*int64(in.Cap) && in.Ready+1 > need {
		need = in.Ready + 1
		reason = "scale up: capacity rejections in 5m with every pod at the cap"
	}
	if in.Pressure.in(p.Guard) > 0 && in.Pods > need {
		need = in.Pods
		reason = "scale-down guard: rejections in the last " + guardName(p.Guard)
	}
	return Decision{Replicas: max(need, 0), Reason: reason}
}
