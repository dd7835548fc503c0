// Package kedatest asks the external scaler what KEDA asks it, through
// KEDA's generated gRPC client.
package kedatest

import (
	"context"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
)

// Ref is a ScaledObject of fleet, with metric as its trigger's metric
// ("" leaves the scaler's default).
func Ref(fleet, metric string) *externalscaler.ScaledObjectRef {
	md := map[string]string{"fleet": fleet}
	if metric != "" {
		md["metric"] = metric
	}
	return &externalscaler.ScaledObjectRef{Name: "backend", Namespace: "default", ScalerMetadata: md}
}

// Metric is the value KEDA would read for fleet's metric: GetMetricSpec,
// then GetMetrics with the name the spec gave.
func Metric(ctx context.Context, c externalscaler.ExternalScalerClient, fleet, metric string) (float64, error) {
	r := Ref(fleet, metric)
	spec, err := c.GetMetricSpec(ctx, r)
	if err != nil {
		return 0, err
	}
	res, err := c.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: r, MetricName: spec.MetricSpecs[0].MetricName})
	if err != nil {
		return 0, err
	}
	return res.MetricValues[0].MetricValueFloat, nil
}
