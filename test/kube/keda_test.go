package kube_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

var (
	crdGVR          = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	scaledObjectGVR = schema.GroupVersionResource{Group: "keda.sh", Version: "v1alpha1", Resource: "scaledobjects"}
)

// kedaCRDDir is config/crd/bases of the github.com/kedacore/keda/v2 module
// go.mod requires: the CRDs of the KEDA release the scaler speaks to.
// go mod download fetches the module if the cache lacks it and prints
// where it is.
func kedaCRDDir(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", "github.com/kedacore/keda/v2")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download github.com/kedacore/keda/v2: %v\n%s", err, out)
	}
	var m struct{ Dir, Version string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download github.com/kedacore/keda/v2: no module directory in %s (%v)", out, err)
	}
	return filepath.Join(m.Dir, "config", "crd", "bases")
}

// installKEDACRDs creates every CRD of KEDA's release (ScaledObject,
// ScaledJob, TriggerAuthentication, ...) as its install does, waits until
// the API server serves them, and returns a dynamic client of the admin.
func installKEDACRDs(ctx context.Context, t *testing.T, cp *controlPlane) dynamic.Interface {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cp.config(adminToken))
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(kedaCRDDir(t), "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in KEDA's config/crd/bases (%v)", err)
	}
	var names []string
	for _, f := range files {
		for _, o := range decodeYAML(t, f) {
			if _, err := dyn.Resource(crdGVR).Create(ctx, o, metav1.CreateOptions{}); err != nil {
				t.Fatalf("creating CRD %s from %s: %v", o.GetName(), filepath.Base(f), err)
			}
			names = append(names, o.GetName())
		}
	}
	for _, n := range names {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			o, err := dyn.Resource(crdGVR).Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
			for _, c := range conds {
				if c, ok := c.(map[string]any); ok && c["type"] == "Established" && c["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s never established: %v", n, err)
		}
	}
	return dyn
}

// decodeYAML reads every object of a multi-document YAML file.
func decodeYAML(t *testing.T, file string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var m map[string]any
		if err := d.Decode(&m); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(m) > 0 {
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
}

// chartDefaults are the chart's default values the scale-down depends on,
// from charts/wsgate/values.yaml.
type chartDefaults struct {
	// Behavior is the HPA behaviour of its ScaledObjects (keda.behavior).
	Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior
	// Settle is the hook's settle delay (scaler.deletionCostSettle).
	Settle time.Duration
	// MinReplicas is the first backend's minReplicaCount.
	MinReplicas int
}

func chartValues(t *testing.T) chartDefaults {
	t.Helper()
	b, err := os.ReadFile("../../charts/wsgate/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Scaler struct {
			DeletionCostSettle string `json:"deletionCostSettle"`
		} `json:"scaler"`
		Keda struct {
			Behavior autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior"`
			Backends []struct {
				MinReplicaCount int `json:"minReplicaCount"`
			} `json:"backends"`
		} `json:"keda"`
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	settle, err := time.ParseDuration(v.Scaler.DeletionCostSettle)
	if err != nil {
		t.Fatalf("charts/wsgate/values.yaml scaler.deletionCostSettle: %v", err)
	}
	if v.Keda.Behavior.ScaleDown == nil || v.Keda.Behavior.ScaleDown.StabilizationWindowSeconds == nil || len(v.Keda.Backends) == 0 {
		t.Fatal("charts/wsgate/values.yaml: no keda.behavior.scaleDown.stabilizationWindowSeconds or keda.backends")
	}
	return chartDefaults{Behavior: &v.Keda.Behavior, Settle: settle, MinReplicas: v.Keda.Backends[0].MinReplicaCount}
}

// createScaledObject creates the ScaledObject KEDA would act on for fleet's
// Deployment (same name), as the chart's template writes it: an external
// trigger of the fleet's desiredReplicas metric, minReplicaCount min and
// the HPA behaviour b (nil: KEDA's and the HPA's defaults).
func createScaledObject(ctx context.Context, t *testing.T, dyn dynamic.Interface, fleet string, min int32, b *autoscalingv2.HorizontalPodAutoscalerBehavior) {
	t.Helper()
	spec := map[string]any{
		"scaleTargetRef":  map[string]any{"name": fleet},
		"minReplicaCount": int64(min),
		"maxReplicaCount": int64(20),
		"triggers": []any{map[string]any{"type": "external", "metadata": map[string]any{
			"scalerAddress": "wsgate-scaler.apps.svc:9000", "fleet": fleet, "metric": "desiredReplicas"}}},
	}
	if b != nil {
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		spec["advanced"] = map[string]any{"horizontalPodAutoscalerConfig": map[string]any{"behavior": m}}
	}
	o := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
		"metadata": map[string]any{"name": fleet, "namespace": ns},
		"spec":     spec,
	}}
	if _, err := dyn.Resource(scaledObjectGVR).Namespace(ns).Create(ctx, o, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating ScaledObject %s: %v", fleet, err)
	}
}
