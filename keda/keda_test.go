package keda_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"sigs.k8s.io/yaml"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
)

func decode(t *testing.T, file string, into any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func exampleFleets(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile("../fleets/fleets.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fleets, err := fleets.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range fleets {
		out[f.Name] = true
	}
	return out
}

// TestScaledObjects decodes every example strictly into KEDA's types and
// checks that each wsgate trigger is one the scaler accepts.
func TestScaledObjects(t *testing.T) {
	files, _ := filepath.Glob("scaledobject-*.yaml")
	if len(files) < 3 {
		t.Fatalf("found %v, want the external, external-push and envoy examples", files)
	}
	known := exampleFleets(t)
	seen := map[string]bool{}
	for _, file := range files {
		var so kedav1alpha1.ScaledObject
		decode(t, file, &so)
		if so.Kind != "ScaledObject" || so.APIVersion != "keda.sh/v1alpha1" || so.Spec.ScaleTargetRef == nil || so.Spec.ScaleTargetRef.Name == "" {
			t.Errorf("%s: not a ScaledObject with a target: %+v", file, so.TypeMeta)
		}
		hpa := so.Spec.Advanced
		if hpa == nil || hpa.HorizontalPodAutoscalerConfig == nil || hpa.HorizontalPodAutoscalerConfig.Behavior == nil || hpa.HorizontalPodAutoscalerConfig.Behavior.ScaleDown == nil {
			t.Errorf("%s: no scale-down behavior", file)
		} else if sd := hpa.HorizontalPodAutoscalerConfig.Behavior.ScaleDown; sd.StabilizationWindowSeconds == nil || *sd.StabilizationWindowSeconds < 300 || len(sd.Policies) == 0 {
			t.Errorf("%s: scale-down is not calm: %+v", file, sd)
		}
		for _, tr := range so.Spec.Triggers {
			if tr.Type != "external" && tr.Type != "external-push" {
				continue
			}
			seen[tr.Type] = true
			if !strings.HasSuffix(tr.Metadata["scalerAddress"], ":9000") {
				t.Errorf("%s: scalerAddress %q, want the scaler's --listen port 9000", file, tr.Metadata["scalerAddress"])
			}
			trig, err := scaler.ParseTrigger(tr.Metadata)
			if err != nil {
				t.Errorf("%s: the scaler refuses the trigger: %v", file, err)
				continue
			}
			if !known[trig.Fleet] {
				t.Errorf("%s: fleet %q not in fleets/fleets.example.yaml", file, trig.Fleet)
			}
			seen[string(trig.Metric)] = true
			want := autoscalingv2.AverageValueMetricType
			if trig.Metric == scaler.MetricSaturation || trig.Metric == scaler.MetricRateLimitPressure {
				want = autoscalingv2.ValueMetricType
			}
			if tr.MetricType != want {
				t.Errorf("%s: %s with metricType %q, want %q", file, trig.Metric, tr.MetricType, want)
			}
			if tr.Metadata["enableTLS"] == "true" && (tr.AuthenticationRef == nil || tr.AuthenticationRef.Name != "wsgate-scaler-tls") {
				t.Errorf("%s: TLS without the wsgate-scaler-tls TriggerAuthentication", file)
			}
			// Held metrics must never scale down.
			if so.Spec.Fallback != nil && so.Spec.Fallback.Behavior != "currentReplicasIfHigher" {
				t.Errorf("%s: fallback behavior %q scales down on held metrics", file, so.Spec.Fallback.Behavior)
			}
			if trig.Metric == scaler.MetricDesiredReplicas && so.Spec.Fallback == nil {
				t.Errorf("%s: desiredReplicas without a fallback for held metrics", file)
			}
		}
	}
	for _, want := range []string{"external", "external-push", "desiredReplicas", "rateLimitPressure"} {
		if !seen[want] {
			t.Errorf("no example uses %s", want)
		}
	}
}

func TestTriggerAuthentication(t *testing.T) {
	var ta kedav1alpha1.TriggerAuthentication
	decode(t, "triggerauthentication-tls.yaml", &ta)
	params := map[string]bool{}
	for _, s := range ta.Spec.SecretTargetRef {
		params[s.Parameter] = s.Name != "" && s.Key != ""
	}
	for _, p := range []string{"caCert", "tlsClientCert", "tlsClientKey"} {
		if !params[p] {
			t.Errorf("parameter %s missing (KEDA's external trigger reads it from authParams)", p)
		}
	}
	if len(params) != 3 {
		t.Errorf("parameters %v: the external trigger reads only caCert, tlsClientCert, tlsClientKey", params)
	}
}
