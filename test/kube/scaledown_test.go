package kube_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/scaler/podcost"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

const (
	ns    = "apps"
	fleet = "chat"
)

// chartRole is the Role charts/wsgate renders for the scaler: its rules
// are plain YAML in the template.
func chartRole(t *testing.T) []rbacv1.PolicyRule {
	t.Helper()
	b, err := os.ReadFile("../../charts/wsgate/templates/scaler-rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	s = s[strings.Index(s, "rules:"):]
	s = s[:strings.Index(s, "---")]
	var r struct{ Rules []rbacv1.PolicyRule }
	if err := yaml.Unmarshal([]byte(s), &r); err != nil {
		t.Fatal(err)
	}
	return r.Rules
}

// kubelet plays the node: binds the fleet's pods, runs them (Running,
// Ready, an IP from TEST-NET-1, which nothing dials) and deletes them
// once they get a deletionTimestamp.
func kubelet(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	next := 10
	ips := map[string]string{}
	handle := func(p *corev1.Pod) {
		switch {
		case p.DeletionTimestamp != nil:
			c.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		case p.Spec.NodeName == "":
			c.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name},
				Target: corev1.ObjectReference{Kind: "Node", Name: "node-1"}}, metav1.CreateOptions{})
		case p.Status.Phase != corev1.PodRunning:
			mu.Lock()
			ip, ok := ips[p.Name]
			if !ok {
				ip = fmt.Sprintf("192.0.2.%d", next)
				next++
				ips[p.Name] = ip
			}
			mu.Unlock()
			p = p.DeepCopy()
			now := metav1.Now()
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &now,
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
			c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		}
	}
	f := informers.NewSharedInformerFactoryWithOptions(c, 0, informers.WithNamespace(ns))
	f.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { handle(o.(*corev1.Pod)) },
		UpdateFunc: func(_, o any) { handle(o.(*corev1.Pod)) },
	})
	f.Start(ctx.Done())
	t.Cleanup(f.Shutdown)
}

// TestScaleDownDeletesTheEmptiestPods: ten pods under mixed load, the
// recommendation falls to five; the hook, with the chart's Role through a
// ServiceAccount token, prepares the scale-down and the real ReplicaSet
// controller deletes exactly the five emptiest.
func TestScaleDownDeletesTheEmptiestPods(t *testing.T) {
	cp := startControlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := cp.admin
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	scalerClient := scalerAccount(ctx, t, a, cp)

	labels := map[string]string{"app": fleet}
	must(a.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fleet},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "ws", Port: 8080, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{}))
	kubelet(ctx, t, a)
	must(a.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: fleet},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](10), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "backend", Image: "wsbackend",
					Ports: []corev1.ContainerPort{{Name: "ws", ContainerPort: 8080}}}}}}}}, metav1.CreateOptions{}))

	// The scaler's side: real Redis, discovery and the hook on the SA token.
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	store := tracker.NewStore(rdb, "wsgate")
	reg := discovery.NewRegistry(store)
	disc, err := discovery.New(scalerClient, ns, []tracker.FleetConfig{{Name: fleet, MaxConnectionsPerPod: 10, Service: fleet, Port: "ws"}}, reg, 0)
	if err != nil {
		t.Fatal(err)
	}
	go disc.Run(ctx)
	go reg.Run(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(scalerClient, 0, informers.WithNamespace(ns))
	hook := podcost.New(scalerClient, factory.Core().V1().Pods(), ns, store, reg,
		podcost.WithSettle(2*time.Second), podcost.WithMinPatchInterval(time.Second))
	factory.Start(ctx.Done())
	t.Cleanup(factory.Shutdown)

	ready := func() []tracker.Pod {
		var out []tracker.Pod
		for _, p := range reg.Pods(fleet) {
			if p.Ready && p.Name != "" {
				out = append(out, p)
			}
		}
		return out
	}
	if err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(context.Context) (bool, error) {
		return len(ready()) == 10, nil
	}); err != nil {
		t.Fatalf("discovery never showed 10 ready pods: %v (%d)", err, len(ready()))
	}

	// Mixed load, reported by a tracker's heartbeat.
	pods := ready()
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	loads := []int{5, 0, 3, 1, 7, 2, 0, 4, 6, 1}
	var counts []tracker.PodCount
	load := map[string]int{}
	for i, p := range pods {
		counts = append(counts, tracker.PodCount{Pod: p.Addr, Live: loads[i]})
		load[p.Name] = loads[i]
	}
	if _, err := store.Sync(ctx, tracker.SyncRequest{Fleet: fleet, Instance: "envoy-1", Lease: time.Hour,
		RecoveryWait: time.Millisecond, Seq: 1, Counts: counts}); err != nil {
		t.Fatal(err)
	}
	byLoad := append([]tracker.Pod(nil), pods...)
	sort.SliceStable(byLoad, func(i, j int) bool { return load[byLoad[i].Name] < load[byLoad[j].Name] })
	minCut, keep := 0, map[string]bool{}
	for i, p := range byLoad {
		if i < 5 {
			minCut += load[p.Name]
		} else {
			keep[p.Name] = true
		}
	}

	// The HPA's side: poll the gate until it reports 5, then scale.
	start := time.Now()
	if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		return hook.Gate(ctx, fleet, 10, 5) == 5, nil
	}); err != nil {
		t.Fatalf("the hook never released the scale-down: %v", err)
	}
	held := time.Since(start)
	must(a.AppsV1().Deployments(ns).UpdateScale(ctx, fleet, &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: fleet, Namespace: ns},
		Spec: autoscalingv1.ScaleSpec{Replicas: 5}}, metav1.UpdateOptions{}))

	var left []corev1.Pod
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		l, err := a.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		left = l.Items
		return len(left) == 5, nil
	}); err != nil {
		t.Fatalf("pods never went down to 5: %v (%d)", err, len(left))
	}
	cut := 0
	for _, p := range pods {
		gone := true
		for _, l := range left {
			if l.Name == p.Name {
				gone = false
			}
		}
		if gone {
			cut += load[p.Name]
			if keep[p.Name] {
				t.Errorf("pod %s with %d connections was deleted; the emptiest should have gone", p.Name, load[p.Name])
			}
		}
	}
	t.Logf("scale-down 10 -> 5: cut %d connections (minimum %d); the hook held %s", cut, minCut, held.Round(time.Millisecond))
}
