package kube_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/wsgate/wsgate/fleets"
)

// holdFinalizer keeps a deleted pod terminating until the test removes it,
// as a kubelet does while the pod's containers stop.
const holdFinalizer = "wsgate.test/hold"

// TestDiscoveryFollowsRealPods: the scaler's discovery, on the chart's
// Role, follows the EndpointSlices that the real EndpointSlice controller
// writes for the fleet's pods, and Redis holds what admission must see: a
// new pod ready with its name, node and address; a pod that turns not
// ready listed but not ready, and ready again when it recovers; a
// terminating pod (deleted, its containers still stopping) listed not
// ready; a pod gone, gone from Redis.
func TestDiscoveryFollowsRealPods(t *testing.T) {
	cp := startControlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := cp.admin
	client := scalerAccount(ctx, t, a, cp, chartRole(t))
	kubelet(ctx, t, a)
	labels := service(ctx, t, a, fleet)
	for i := range 3 {
		p := barePod(fmt.Sprintf("%s-%d", fleet, i), labels)
		if i == 1 {
			p.Finalizers = []string{holdFinalizer}
		}
		_, err := a.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		noErr(t, err)
	}
	s := startScaler(ctx, t, client, newStore(t), []fleets.Fleet{fleetCfg(fleet, 10)})

	// Ready: each pod with its name, node and address (the pod's IP, the
	// Service's target port).
	ready := s.awaitReady(ctx, t, fleet, 3)
	addr := map[string]string{}
	for i, p := range ready {
		pod, err := a.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		noErr(t, err)
		want := fleets.Pod{Addr: net.JoinHostPort(pod.Status.PodIP, "8080"), Name: fmt.Sprintf("%s-%d", fleet, i), Node: "node-1", Ready: true}
		if p != want {
			t.Errorf("Redis has %+v; want %+v", p, want)
		}
		addr[p.Name] = p.Addr
	}

	// awaitPod waits until Redis shows pod name as want says (nil: absent)
	// and the EndpointSlices say why.
	awaitPod := func(name, what string, want *fleets.Pod, endpoint func(*discoveryv1.Endpoint) bool) {
		t.Helper()
		var got fleets.Pod
		var listed bool
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			got, listed = s.snapshot(ctx, t, fleet).Pods[addr[name]]
			ep, err := endpointOf(ctx, a, fleet, name)
			if err != nil || !endpoint(ep) {
				return false, err
			}
			if want == nil {
				return !listed, nil
			}
			return listed && got == *want, nil
		})
		if err != nil {
			t.Fatalf("%s: Redis has %+v (listed %v); want %+v: %v", what, got, listed, want, err)
		}
	}
	pod := func(name string, ready bool) *fleets.Pod {
		return &fleets.Pod{Addr: addr[name], Name: name, Node: "node-1", Ready: ready}
	}
	is := func(b *bool) bool { return b != nil && *b }

	setReady(ctx, t, a, fleet+"-0", false)
	awaitPod(fleet+"-0", "a pod turned not ready", pod(fleet+"-0", false), func(ep *discoveryv1.Endpoint) bool {
		return ep != nil && !is(ep.Conditions.Ready) && !is(ep.Conditions.Terminating)
	})
	setReady(ctx, t, a, fleet+"-0", true)
	awaitPod(fleet+"-0", "the pod ready again", pod(fleet+"-0", true), func(ep *discoveryv1.Endpoint) bool {
		return ep != nil && is(ep.Conditions.Ready)
	})

	noErr(t, a.CoreV1().Pods(ns).Delete(ctx, fleet+"-1", metav1.DeleteOptions{}))
	awaitPod(fleet+"-1", "a terminating pod", pod(fleet+"-1", false), func(ep *discoveryv1.Endpoint) bool {
		return ep != nil && is(ep.Conditions.Terminating) && !is(ep.Conditions.Ready)
	})
	if p := s.snapshot(ctx, t, fleet).Pods[addr[fleet+"-2"]]; !p.Ready {
		t.Fatalf("the other pods must stay ready: %+v", p)
	}
	release(ctx, t, a, fleet+"-1")
	awaitPod(fleet+"-1", "a pod gone", nil, func(ep *discoveryv1.Endpoint) bool { return ep == nil })
	if n := len(s.ready(ctx, t, fleet)); n != 2 {
		t.Fatalf("%d ready pods after one of three went; want 2", n)
	}
}

// release removes holdFinalizer from pod name.
func release(ctx context.Context, t *testing.T, a kubernetes.Interface, name string) {
	t.Helper()
	_, err := a.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	noErr(t, err)
}
