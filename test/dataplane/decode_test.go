package dataplane_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	extensionsv1alpha1 "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// rendered is one helm template output, every object decoded into its Go type.
type rendered struct {
	objs map[string]any // "Kind/name" -> typed object (pointer)
	keys []string
}

// decodeStrict decodes every document into its project's Go type, failing
// on an unknown kind or field: what the API server would reject or drop.
func decodeStrict(t *testing.T, out []byte) rendered {
	t.Helper()
	r := rendered{objs: map[string]any{}}
	for i, doc := range splitDocs(out) {
		var head struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatalf("document %d: %v\n%s", i, err, doc)
		}
		obj, err := decodeOne(doc, head.TypeMeta)
		if err != nil {
			t.Fatalf("document %d (%s %s): %v\n%s", i, head.Kind, head.Metadata.Name, err, doc)
		}
		key := head.Kind + "/" + head.Metadata.Name
		if _, dup := r.objs[key]; dup {
			t.Fatalf("%s rendered twice", key)
		}
		r.objs[key] = obj
		r.keys = append(r.keys, key)
	}
	return r
}

func decodeOne(doc []byte, tm metav1.TypeMeta) (any, error) {
	switch tm.GroupVersionKind().GroupVersion() {
	case egv1a1.GroupVersion:
		var obj any
		switch tm.Kind {
		case egv1a1.KindEnvoyProxy:
			obj = &egv1a1.EnvoyProxy{}
		case egv1a1.KindEnvoyExtensionPolicy:
			obj = &egv1a1.EnvoyExtensionPolicy{}
		case egv1a1.KindEnvoyPatchPolicy:
			obj = &egv1a1.EnvoyPatchPolicy{}
		default:
			return nil, fmt.Errorf("unexpected Envoy Gateway kind %s", tm.Kind)
		}
		return obj, yaml.UnmarshalStrict(doc, obj)
	case kedav1alpha1.GroupVersion:
		var obj any
		switch tm.Kind {
		case "ScaledObject":
			obj = &kedav1alpha1.ScaledObject{}
		case "TriggerAuthentication":
			obj = &kedav1alpha1.TriggerAuthentication{}
		default:
			return nil, fmt.Errorf("unexpected KEDA kind %s", tm.Kind)
		}
		return obj, yaml.UnmarshalStrict(doc, obj)
	case extensionsv1alpha1.SchemeGroupVersion:
		if tm.Kind != "TrafficExtension" {
			return nil, fmt.Errorf("unexpected kind %s", tm.Kind)
		}
		obj := &extensionsv1alpha1.TrafficExtension{}
		return obj, decodeIstio(doc, obj, &obj.Spec)
	case networkingv1alpha3.SchemeGroupVersion:
		if tm.Kind != "EnvoyFilter" {
			return nil, fmt.Errorf("unexpected kind %s", tm.Kind)
		}
		obj := &networkingv1alpha3.EnvoyFilter{}
		return obj, decodeIstio(doc, obj, &obj.Spec)
	case networkingv1.SchemeGroupVersion:
		if tm.Kind != "ServiceEntry" {
			return nil, fmt.Errorf("unexpected kind %s", tm.Kind)
		}
		obj := &networkingv1.ServiceEntry{}
		return obj, decodeIstio(doc, obj, &obj.Spec)
	case telemetryv1.SchemeGroupVersion:
		if tm.Kind != "Telemetry" {
			return nil, fmt.Errorf("unexpected kind %s", tm.Kind)
		}
		obj := &telemetryv1.Telemetry{}
		return obj, decodeIstio(doc, obj, &obj.Spec)
	}
	// Kubernetes' own kinds: the scheme knows them; the strict unmarshal
	// into a fresh object catches what its lenient decoding would drop.
	gvk := tm.GroupVersionKind()
	obj, err := scheme.Scheme.New(gvk)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", gvk, err)
	}
	return obj, yaml.UnmarshalStrict(doc, obj)
}

// decodeIstio decodes an Istio object: its envelope strictly, and its spec
// strictly into the API's protobuf message (the client-go types' own JSON
// decoding allows unknown fields, which Istio's webhook would refuse).
func decodeIstio[T proto.Message](doc []byte, obj any, spec T) error {
	var env struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   metav1.ObjectMeta `json:"metadata"`
		Spec       json.RawMessage   `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(doc, &env); err != nil {
		return fmt.Errorf("strict decode: %w", err)
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(env.Spec, spec); err != nil {
		return fmt.Errorf("spec: strict decode into %T: %w", spec, err)
	}
	// And the whole object as client-go reads it.
	return yaml.Unmarshal(doc, obj)
}

// splitDocs splits a multi-document YAML stream, dropping documents that
// hold only comments (helm's "# Source:" lines of empty templates).
func splitDocs(out []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(out, []byte("\n---")) {
		d = append(bytes.TrimPrefix(d, []byte("---")), '\n')
		for _, line := range strings.Split(string(d), "\n") {
			if s := strings.TrimSpace(line); s != "" && !strings.HasPrefix(s, "#") {
				docs = append(docs, d)
				break
			}
		}
	}
	return docs
}

// get returns the object Kind/name as T, failing the test if it is missing.
func get[T any](t *testing.T, r rendered, kind, name string) T {
	t.Helper()
	obj, ok := r.objs[kind+"/"+name]
	if !ok {
		t.Fatalf("%s/%s not rendered; rendered: %v", kind, name, r.keys)
	}
	v, ok := obj.(T)
	if !ok {
		t.Fatalf("%s/%s is %T", kind, name, obj)
	}
	return v
}
