package podcost_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wsgate/wsgate/scaler/podcost"
)

const scaledObjects = `{"apiVersion":"keda.sh/v1alpha1","kind":"ScaledObjectList","items":[
 {"metadata":{"name":"chat"},"spec":{"minReplicaCount":3,
  "advanced":{"horizontalPodAutoscalerConfig":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":60}}}},
  "triggers":[{"type":"external","metadata":{"fleet":"chat","metric":"desiredReplicas"}}]}},
 {"metadata":{"name":"chat-connections"},"spec":{"minReplicaCount":9,
  "triggers":[{"type":"external","metadata":{"fleet":"chat","metric":"connections"}}]}},
 {"metadata":{"name":"game"},"spec":{
  "triggers":[{"type":"cpu","metadata":{"fleet":"chat"}},{"type":"external-push","metadata":{"fleet":"game"}}]}}
]}`

func TestScaledObjectsGiveTheMinimumAndTheWindow(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/apis/keda.sh/v1alpha1/namespaces/apps/scaledobjects" {
			http.NotFound(w, r)
			return
		}
		requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(scaledObjects))
	}))
	defer srv.Close()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	so := podcost.NewScaledObjects(cs.CoreV1().RESTClient(), "apps", time.Hour)
	ctx := context.Background()
	for fleet, want := range map[string]podcost.Autoscaling{
		// The connections trigger is not the desiredReplicas one.
		"chat": {Known: true, MinReplicas: 3, ScaleDownWindow: time.Minute},
		// KEDA's default minimum (0) and the HPA's default window.
		"game":  {Known: true, MinReplicas: 0, ScaleDownWindow: 5 * time.Minute},
		"other": {},
	} {
		got, err := so.Autoscaling(ctx, fleet)
		if err != nil || got != want {
			t.Errorf("Autoscaling(%s) = %+v, %v; want %+v", fleet, got, err, want)
		}
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("list requests = %d, want 1 within the ttl", n)
	}

	if _, err := podcost.NewScaledObjects(cs.CoreV1().RESTClient(), "elsewhere", time.Hour).Autoscaling(ctx, "chat"); err == nil {
		t.Error("Autoscaling in a namespace the server refuses: want an error")
	}
}
