package scaler

import (
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

func TestDecide(t *testing.T) {
	u1 := DefaultParams
	u1.TargetUtilization = 1
	noGuard := DefaultParams
	noGuard.Guard = 0
	guard5 := DefaultParams
	guard5.Guard = 5 * time.Minute
	const retry = 5 * time.Second
	tests := []struct {
		name   string
		p      Params
		in     Input
		want   int64
		reason string
	}{
		{"zero pods, zero connections", DefaultParams, Input{Cap: 2, RetryAfter: retry}, 0, "capacity target"},
		{"zero connections scales to zero", DefaultParams, Input{Cap: 2, RetryAfter: retry, Pods: 3, Ready: 3, Placeable: 3}, 0, "capacity target"},
		{"capacity target rounds up", DefaultParams, Input{Cap: 2, RetryAfter: retry, Live: 8, Pods: 9, Ready: 9, Placeable: 9}, 5, "capacity target"},
		{"exact multiple is not rounded up", DefaultParams, Input{Cap: 2, RetryAfter: retry, Live: 16, Pods: 10, Ready: 10, Placeable: 10}, 10, "capacity target"},
		{"zero pods with no_pods rejections asks for one", DefaultParams, Input{Cap: 2, RetryAfter: retry, Pressure: Window{1, 1, 1}}, 1, ""},
		{"cap reached with rejections adds a pod", u1, Input{Cap: 2, RetryAfter: retry, Live: 8, Pods: 5, Ready: 5, Placeable: 4, Pressure: Window{1, 1, 1}}, 6, "scale up"},
		{"cap reached, waiting clients count", DefaultParams, Input{Cap: 2, RetryAfter: retry, Live: 8, Pods: 4, Ready: 4, Placeable: 4, Pressure: Window{3, 3, 3}}, 6, "capacity target"},
		{"rejections but a pod has room: no step", u1, Input{Cap: 2, RetryAfter: retry, Live: 8, Pods: 5, Ready: 5, Placeable: 5, Pressure: Window{3, 3, 3}}, 5, ""},
		{"starting pod is not asked for twice", u1, Input{Cap: 2, RetryAfter: retry, Live: 8, Pods: 5, Ready: 4, Placeable: 4, Pressure: Window{2, 2, 2}}, 5, ""},
		{"guard active holds the pods", DefaultParams, Input{Cap: 2, RetryAfter: retry, Live: 2, Pods: 6, Ready: 6, Placeable: 6, Pressure: Window{0, 1, 1}}, 6, "guard"},
		{"guard off scales down", noGuard, Input{Cap: 2, RetryAfter: retry, Live: 2, Pods: 6, Ready: 6, Placeable: 6, Pressure: Window{0, 1, 1}}, 2, "capacity target"},
		{"5m guard ignores older rejections", guard5, Input{Cap: 2, RetryAfter: retry, Live: 2, Pods: 6, Ready: 6, Placeable: 6, Pressure: Window{0, 1, 1}}, 2, "capacity target"},
		{"guard never lowers a scale-up", DefaultParams, Input{Cap: 2, RetryAfter: retry, Live: 16, Pods: 6, Ready: 6, Placeable: 6, Pressure: Window{0, 1, 1}}, 10, "capacity target"},
		{"repeated pressure keeps headroom", DefaultParams, Input{Cap: 2, RetryAfter: retry, Live: 8, Pods: 9, Ready: 9, Placeable: 9, Pressure: Window{0, 0, 10}}, 7, "headroom"},
		{"below the headroom threshold", DefaultParams, Input{Cap: 2, RetryAfter: retry, Live: 8, Pods: 9, Ready: 9, Placeable: 9, Pressure: Window{0, 0, 9}}, 5, "capacity target"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.p, tc.in)
			if d.Replicas != tc.want {
				t.Fatalf("Decide = %d (%s), want %d", d.Replicas, d.Reason, tc.want)
			}
			if !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("reason %q, want it to mention %q", d.Reason, tc.reason)
			}
		})
	}
}

func TestParseTrigger(t *testing.T) {
	tr, err := ParseTrigger(map[string]string{"fleet": "web", "scalerAddress": "x:9000", "enableTLS": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Metric != MetricDesiredReplicas || tr.Params != DefaultParams || tr.RateLimitTarget != 0.1 {
		t.Errorf("defaults: %+v", tr)
	}
	tr, err = ParseTrigger(map[string]string{"fleet": "web", "metric": "saturation", "targetUtilization": "0.5",
		"headroom": "0", "headroomAfter": "3", "scaleDownGuard": "1h", "activationConnections": "4", "activationRejections": "2", "rateLimitTarget": "0.3"})
	if err != nil {
		t.Fatal(err)
	}
	want := Trigger{Fleet: "web", Metric: MetricSaturation, Params: Params{TargetUtilization: 0.5, Headroom: 0, HeadroomAfter: 3, Guard: time.Hour},
		ActivationConnections: 4, ActivationRejections: 2, RateLimitTarget: 0.3}
	if tr != want {
		t.Errorf("got %+v, want %+v", tr, want)
	}
	bad := []struct {
		md         map[string]string
		key, names string
	}{
		{map[string]string{}, `"fleet"`, "fleets file"},
		{map[string]string{"fleet": "web", "metric": "cpu"}, `"metric"`, "desiredReplicas"},
		{map[string]string{"fleet": "web", "targetUtilization": "0"}, `"targetUtilization"`, "(0, 1]"},
		{map[string]string{"fleet": "web", "targetUtilization": "abc"}, `"targetUtilization"`, "(0, 1]"},
		{map[string]string{"fleet": "web", "scaleDownGuard": "2m"}, `"scaleDownGuard"`, "5m, 15m (default), 1h, off"},
		{map[string]string{"fleet": "web", "headroomAfter": "-1"}, `"headroomAfter"`, "integer"},
		{map[string]string{"fleet": "web", "rateLimitTarget": "0"}, `"rateLimitTarget"`, "from 0.001"},
	}
	for _, b := range bad {
		_, err := ParseTrigger(b.md)
		if err == nil || !strings.Contains(err.Error(), b.key) || !strings.Contains(err.Error(), b.names) {
			t.Errorf("ParseTrigger(%v) = %v, want an error naming %s and %s", b.md, err, b.key, b.names)
		}
	}
}

// A recovery wait is not demand (POLICY.md): its refusals, like
// redis_down and rate_limit ones, reach neither the pressure windows nor
// saturation; capacity and no_pods do.
func TestRecoveryWaitIsNotDemand(t *testing.T) {
	w := store.Windows{M5: 500, M15: 500, H1: 500}
	sum := store.Summary{Live: 4, Pods: 2, Ready: 2, Placeable: 2, Rejections: map[store.Reason]store.Windows{
		store.ReasonRecovering: w, store.ReasonRedisDown: w, store.ReasonRateLimit: w,
	}}
	fc := fleets.Fleet{Name: "chat", MaxConnectionsPerPod: 2, RetryAfter: fleets.Duration(5 * time.Second)}
	in := policyInput(sum, fc)
	if in.Pressure != (Window{}) {
		t.Errorf("pressure %+v from recovering, redis_down and rate_limit refusals, want none", in.Pressure)
	}
	if d := Decide(DefaultParams, in); d.Replicas != 3 {
		t.Errorf("decision %+v, want 3 (4 live / 1.6 per pod), no scale-up or guard", d)
	}
	sum.Rejections[store.ReasonCapacity] = store.Windows{M5: 1, M15: 1, H1: 1}
	if in := policyInput(sum, fc); in.Pressure != (Window{M5: 1, M15: 1, H1: 1}) {
		t.Errorf("pressure %+v with one capacity refusal, want 1 in every window", in.Pressure)
	}
}
