package chart_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// rendered is the output of one helm template, decoded.
type rendered struct {
	objs map[string]any // "Kind/name" -> typed object (pointer)
	keys []string       // in rendering order
}

// decodeStrict decodes every document of a helm template output into its Go
// type, failing on an unknown kind, an unknown or duplicate field, or a
// value of the wrong type: what the API server would reject or silently drop.
func decodeStrict(t *testing.T, out []byte) rendered {
	t.Helper()
	r := rendered{objs: map[string]any{}}
	for i, doc := range splitDocs(out) {
		var tm metav1.TypeMeta
		var meta struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("document %d: %v\n%s", i, err, doc)
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("document %d (%s): metadata: %v", i, tm.Kind, err)
		}
		obj, err := decodeOne(doc, tm)
		if err != nil {
			t.Fatalf("document %d (%s %s): %v\n%s", i, tm.Kind, meta.Metadata.Name, err, doc)
		}
		key := tm.Kind + "/" + meta.Metadata.Name
		if _, dup := r.objs[key]; dup {
			t.Fatalf("%s rendered twice", key)
		}
		r.objs[key] = obj
		r.keys = append(r.keys, key)
	}
	if len(r.keys) == 0 {
		t.Fatal("helm template rendered no objects")
	}
	return r
}

func decodeOne(doc []byte, tm metav1.TypeMeta) (any, error) {
	switch tm.APIVersion {
	case "":
		return nil, fmt.Errorf("no apiVersion")
	case kedav1alpha1.GroupVersion.String():
		var obj any
		switch tm.Kind {
		case "ScaledObject":
			obj = &kedav1alpha1.ScaledObject{}
		case "TriggerAuthentication":
			obj = &kedav1alpha1.TriggerAuthentication{}
		default:
			return nil, fmt.Errorf("unexpected KEDA kind %s", tm.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("strict decode: %w", err)
		}
		return obj, nil
	case "monitoring.coreos.com/v1":
		return decodeServiceMonitor(doc)
	}
	// The scheme's deserializer knows every built-in kind; the strict
	// unmarshal into a fresh object of the same type catches what its
	// lenient decoding would drop.
	_, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decode with the client-go scheme: %w", err)
	}
	obj, err := scheme.Scheme.New(*gvk)
	if err != nil {
		return nil, err
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("strict decode into %T: %w", obj, err)
	}
	return obj, nil
}

// decodeServiceMonitor checks the fields the Prometheus Operator requires;
// its Go types are not a dependency of this module.
func decodeServiceMonitor(doc []byte) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{}
	if err := yaml.UnmarshalStrict(doc, &u.Object); err != nil {
		return nil, err
	}
	if u.GetKind() != "ServiceMonitor" {
		return nil, fmt.Errorf("unexpected monitoring.coreos.com kind %s", u.GetKind())
	}
	if _, ok, _ := unstructured.NestedMap(u.Object, "spec", "selector"); !ok {
		return nil, fmt.Errorf("ServiceMonitor: spec.selector is required")
	}
	eps, ok, _ := unstructured.NestedSlice(u.Object, "spec", "endpoints")
	if !ok || len(eps) == 0 {
		return nil, fmt.Errorf("ServiceMonitor: spec.endpoints must list at least one endpoint")
	}
	for i, ep := range eps {
		m, _ := ep.(map[string]any)
		if port, _ := m["port"].(string); port == "" {
			return nil, fmt.Errorf("ServiceMonitor: spec.endpoints[%d].port is required", i)
		}
	}
	return u, nil
}

// splitDocs splits a multi-document YAML stream, dropping documents that
// hold only comments (helm's "# Source:" lines of empty templates).
func splitDocs(out []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(out, []byte("\n---")) {
		// The split ate the line break that ends the document's last line.
		d = append(bytes.TrimPrefix(d, []byte("---")), '\n')
		empty := true
		for _, line := range strings.Split(string(d), "\n") {
			if s := strings.TrimSpace(line); s != "" && !strings.HasPrefix(s, "#") {
				empty = false
				break
			}
		}
		if !empty {
			docs = append(docs, d)
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

func (r rendered) has(kind, name string) bool {
	_, ok := r.objs[kind+"/"+name]
	return ok
}

// podSpecs returns every pod template of the rendered workloads.
func (r rendered) podSpecs() map[string]*corev1.PodSpec {
	specs := map[string]*corev1.PodSpec{}
	for _, k := range r.keys {
		switch o := r.objs[k].(type) {
		case *appsv1.Deployment:
			specs[k] = &o.Spec.Template.Spec
		case *appsv1.StatefulSet:
			specs[k] = &o.Spec.Template.Spec
		}
	}
	return specs
}

// container returns the named container of a pod spec.
func container(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	for i := range spec.InitContainers { // native sidecars
		if spec.InitContainers[i].Name == name {
			return &spec.InitContainers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

// envOf returns a container's environment by name.
func envOf(c *corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}
