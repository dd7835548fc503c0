package scaler

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/wsgate/wsgate/httplimit"
)

// Metric is what a trigger asks the scaler to report.
type Metric string

// The metrics a trigger can choose with its `metric` key.
const (
	// MetricDesiredReplicas is the policy's replica count (metricType
	// AverageValue, target 1: the HPA then wants exactly this many pods).
	MetricDesiredReplicas Metric = "desiredReplicas"
	// MetricConnections is the fleet's live connections (AverageValue,
	// target maxConnectionsPerPod × targetUtilization).
	MetricConnections Metric = "connections"
	// MetricSaturation is live ÷ (placeable pods × cap) (metricType Value,
	// target targetUtilization).
	MetricSaturation Metric = "saturation"
	// MetricRateLimitPressure is the rate_limit rejections per second per
	// live tracker instance over 5 min, as a fraction of ratePerSecond
	// (metricType Value, target rateLimitTarget): it scales Envoy itself.
	MetricRateLimitPressure Metric = "rateLimitPressure"
)

var metrics = []Metric{MetricDesiredReplicas, MetricConnections, MetricSaturation, MetricRateLimitPressure}

// Trigger is a ScaledObject trigger's scalerMetadata, parsed.
type Trigger struct {
	Fleet  string
	Metric Metric
	Params Params
	// ActivationConnections: the fleet is active above this many live
	// connections. Default 0.
	ActivationConnections int64
	// ActivationRejections: the fleet is active above this many rejections
	// in 5 min (capacity/no_pods; rate_limit for rateLimitPressure). Default 0.
	ActivationRejections int64
	// RateLimitTarget is rateLimitPressure's target. Default 0.1.
	RateLimitTarget float64
}

// metadataError is a bad scalerMetadata key; the server answers it with
// InvalidArgument.
type metadataError struct {
	key, value, want string
	whole            string // what is wrong with the metadata as a whole
}

func (e *metadataError) Error() string {
	if e.whole != "" {
		return "scalerMetadata: " + e.whole
	}
	if e.value == "" {
		return fmt.Sprintf("scalerMetadata %q is required: want %s", httplimit.Clip(e.key), e.want)
	}
	return fmt.Sprintf("scalerMetadata %q=%q: want %s", httplimit.Clip(e.key), httplimit.Clip(e.value), e.want)
}

// Bounds of what a trigger's metadata may hold: KEDA sends the trigger's
// few keys (its own among them); anything far beyond is not a trigger.
const (
	maxMetadataKeys  = 64
	maxMetadataBytes = 16 << 10 // all keys and values together
)

// ParseTrigger reads a trigger's metadata. Keys it does not know (KEDA's
// own scalerAddress, enableTLS, ...) are ignored, up to maxMetadataKeys
// and maxMetadataBytes.
func ParseTrigger(md map[string]string) (Trigger, error) {
	t := Trigger{Metric: MetricDesiredReplicas, Params: DefaultParams, RateLimitTarget: 0.1}
	if len(md) > maxMetadataKeys {
		return t, &metadataError{whole: fmt.Sprintf("%d keys, at most %d accepted", len(md), maxMetadataKeys)}
	}
	size := 0
	for k, v := range md {
		size += len(k) + len(v)
	}
	if size > maxMetadataBytes {
		return t, &metadataError{whole: fmt.Sprintf("%d bytes, at most %d accepted", size, maxMetadataBytes)}
	}
	t.Fleet = strings.TrimSpace(md["fleet"])
	if t.Fleet == "" {
		return t, &metadataError{key: "fleet", want: "the name of a fleet of the scaler's fleets file"}
	}
	if len(t.Fleet) > 63 {
		return t, &metadataError{key: "fleet", value: t.Fleet, want: "a fleet name: at most 63 characters"}
	}
	if v, ok := md["metric"]; ok {
		t.Metric = Metric(v)
		if !validMetric(t.Metric) {
			return t, &metadataError{key: "metric", value: v, want: "one of desiredReplicas (default), connections, saturation, rateLimitPressure"}
		}
	}
	var err error
	if t.Params.TargetUtilization, err = floatKey(md, "targetUtilization", t.Params.TargetUtilization, "a number in (0, 1], default 0.8", func(f float64) bool { return f > 0 && f <= 1 }); err != nil {
		return t, err
	}
	if t.Params.Headroom, err = floatKey(md, "headroom", t.Params.Headroom, "a number in [0, 10], default 0.25", func(f float64) bool { return f >= 0 && f <= 10 }); err != nil {
		return t, err
	}
	// KEDA hands the HPA the target as a milli-quantity: below 0.001 it
	// would be 0, and Inf no target at all.
	if t.RateLimitTarget, err = floatKey(md, "rateLimitTarget", t.RateLimitTarget, "a finite number from 0.001, default 0.1", func(f float64) bool { return f >= 0.001 && !math.IsInf(f, 0) }); err != nil {
		return t, err
	}
	if t.Params.HeadroomAfter, err = intKey(md, "headroomAfter", t.Params.HeadroomAfter, "an integer ≥ 0 (0: never), default 10"); err != nil {
		return t, err
	}
	if t.ActivationConnections, err = intKey(md, "activationConnections", 0, "an integer ≥ 0, default 0"); err != nil {
		return t, err
	}
	if t.ActivationRejections, err = intKey(md, "activationRejections", 0, "an integer ≥ 0, default 0"); err != nil {
		return t, err
	}
	if v, ok := md["scaleDownGuard"]; ok {
		switch v {
		case "5m":
			t.Params.Guard = 5 * time.Minute
		case "15m":
			t.Params.Guard = 15 * time.Minute
		case "1h":
			t.Params.Guard = time.Hour
		case "off":
			t.Params.Guard = 0
		default:
			return t, &metadataError{key: "scaleDownGuard", value: v, want: "one of 5m, 15m (default), 1h, off"}
		}
	}
	return t, nil
}

func validMetric(m Metric) bool {
	for _, v := range metrics {
		if v == m {
			return true
		}
	}
	return false
}

func floatKey(md map[string]string, key string, def float64, want string, ok func(float64) bool) (float64, error) {
	v, set := md[key]
	if !set {
		return def, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || !ok(f) {
		return def, &metadataError{key: key, value: v, want: want}
	}
	return f, nil
}

func intKey(md map[string]string, key string, def int64, want string) (int64, error) {
	v, set := md[key]
	if !set {
		return def, nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return def, &metadataError{key: key, value: v, want: want}
	}
	return n, nil
}

func guardName(d time.Duration) string {
	switch d {
	case 0:
		return "off"
	case time.Hour:
		return "1h"
	}
	return strings.TrimSuffix(d.String(), "0s")
}
