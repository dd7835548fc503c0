package kube_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/wsgate/wsgate/scaler/podcost"
	"github.com/wsgate/wsgate/test/helmtest"
)

// TestHelmInstallsTheChart: helm install of charts/wsgate into the real
// API server, KEDA's CRDs installed: with the default values and with each
// value set test/chart renders, every object the chart renders is created,
// so validated server-side (built-in kinds by the API server, the
// ScaledObjects and TriggerAuthentications by the OpenAPI schemas of
// KEDA's CRDs), not only decoded. The default release's own RBAC then
// lets a token of its scaler's ServiceAccount do what the scaler does and
// nothing more, and the hook reads the chart's ScaledObject as it will in
// a cluster: the minimum and the stabilization window the chart set.
func TestHelmInstallsTheChart(t *testing.T) {
	cp := startControlPlane(t)
	helm, err := helmtest.Build()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	installKEDACRDs(ctx, t, cp)
	if v, err := cp.admin.Discovery().ServerVersion(); err != nil || !strings.HasPrefix(v.GitVersion, "v1.") {
		t.Fatalf("kube-apiserver reports version %v (%v): helm checks the chart's kubeVersion against it; build it with test/kube's -ldflags (unset WSGATE_KUBE_BINDIR once)", v, err)
	}

	sets, err := filepath.Glob("../chart/testdata/*.yaml")
	if err != nil || len(sets) == 0 {
		t.Fatalf("no value sets in test/chart/testdata (%v)", err)
	}
	for _, file := range append([]string{""}, sets...) {
		name := "defaults"
		args := []string{"install", "wsg", "../../charts/wsgate", "--kubeconfig", cp.kubeconfig, "--create-namespace"}
		if file != "" {
			name = strings.TrimSuffix(filepath.Base(file), ".yaml")
			// No Prometheus Operator here: its CRDs are no dependency of
			// this module.
			args = append(args, "--values", file, "--set", "metrics.serviceMonitor.enabled=false")
		}
		args = append(args, "--namespace", "wsg-"+name)
		if out, errOut, err := helmtest.Run(t, helm, args...); err != nil {
			t.Errorf("helm install (%s): %v\n%s%s", name, err, out, errOut)
		}
	}
	if t.Failed() {
		return
	}

	// The default release's scaler, on its own ServiceAccount.
	const rel = "wsg-defaults"
	a := cp.admin
	deps, err := a.AppsV1().Deployments(rel).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=scaler"})
	noErr(t, err)
	if len(deps.Items) != 1 {
		t.Fatalf("%d scaler Deployments in %s; want 1", len(deps.Items), rel)
	}
	sa := deps.Items[0].Spec.Template.Spec.ServiceAccountName
	tok, err := a.CoreV1().ServiceAccounts(rel).CreateToken(ctx, sa, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	noErr(t, err)
	scalerClient := cp.client(t, tok.Status.Token)
	for _, c := range []struct {
		group, resource, verb string
		allowed               bool
	}{
		{"discovery.k8s.io", "endpointslices", "watch", true},
		{"", "pods", "watch", true},
		{"", "pods", "patch", true},
		{"keda.sh", "scaledobjects", "list", true},
		{"", "pods", "delete", false},
		{"", "pods", "update", false},
		{"keda.sh", "scaledobjects", "patch", false},
		{"", "secrets", "get", false},
	} {
		r, err := scalerClient.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authzv1.ResourceAttributes{Namespace: rel, Group: c.group, Resource: c.resource, Verb: c.verb}}}, metav1.CreateOptions{})
		noErr(t, err)
		if r.Status.Allowed != c.allowed {
			t.Errorf("the chart's scaler may %s %s.%s: %v; want %v", c.verb, c.resource, c.group, r.Status.Allowed, c.allowed)
		}
	}
	chart := chartValues(t)
	as, err := podcost.NewScaledObjects(scalerClient.CoreV1().RESTClient(), rel, 0).Autoscaling(ctx, "default")
	noErr(t, err)
	want := podcost.Autoscaling{Known: true, MinReplicas: chart.MinReplicas, ScaleDownWindow: seconds(*chart.Behavior.ScaleDown.StabilizationWindowSeconds)}
	if as != want {
		t.Errorf("the hook reads the chart's ScaledObject as %+v; want %+v", as, want)
	}
}
