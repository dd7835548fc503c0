package discovery_test

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/test/await"
)

// Kubernetes' word on a tracker instance: alive while its Envoy pod is
// listed by the fleet's Envoy Service in any condition (a pod cut off from
// the network goes not ready, not away), gone once it is not; unknown
// before the first list and for fleets without an Envoy Service.
func TestInstanceAliveFollowsTheEnvoyService(t *testing.T) {
	store, _ := newMini(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(
		slice("envoy-a", "envoy", endpoint("10.1.0.1", "envoy-1", true, false), endpoint("10.1.0.2", "envoy-2", false, false),
			endpoint("10.1.0.3", "envoy-3", false, true)),
	)
	fleets := []fleets.Fleet{{Name: "chat", Service: "chat", Port: "ws", EnvoyService: "envoy"}, {Name: "plain", Service: "chat", Port: "ws"}}
	d, err := discovery.New(client, ns, fleets, discovery.NewRegistry(store), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, known := d.InstanceAlive("chat", "envoy-1"); known {
		t.Error("judged before the first list")
	}
	go func() { _ = d.Run(ctx) }()
	await.True(t, "discovery synced", waitLimit, d.Synced)
	for id, want := range map[string]bool{"envoy-1": true, "envoy-2": true, "envoy-3": true, "envoy-9": false} {
		if alive, known := d.InstanceAlive("chat", id); !known || alive != want {
			t.Errorf("InstanceAlive(chat, %s) = %v, %v; want %v, known", id, alive, known, want)
		}
	}
	if _, known := d.InstanceAlive("plain", "envoy-1"); known {
		t.Error("judged an instance of a fleet without an Envoy Service")
	}
	if err := client.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "envoy-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	await.True(t, "envoy-1 gone", waitLimit, func() bool { alive, known := d.InstanceAlive("chat", "envoy-1"); return known && !alive })
}
