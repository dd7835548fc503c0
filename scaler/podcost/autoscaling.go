package podcost

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// Autoscaling is what the hook knows of how KEDA scales a fleet.
type Autoscaling struct {
	// Known is false when no ScaledObject of the fleet could be read; the
	// hook then cannot tell which pods the HPA will keep, so it holds the
	// scale-down and drains nothing.
	Known bool
	// MinReplicas is the ScaledObject's minReplicaCount (KEDA's default 0).
	// KEDA's HPA never goes below max(MinReplicas, 1), so the hook never
	// drains below that either; with 0 (scale to zero) KEDA itself removes
	// the last pod when it deactivates the fleet, idle for its cooldown.
	MinReplicas int
	// ScaleDownWindow is the HPA's scale-down stabilization window
	// (advanced.horizontalPodAutoscalerConfig.behavior.scaleDown; the
	// HPA's default 300 s when unset).
	ScaleDownWindow time.Duration
}

// AutoscalingSource tells the hook a fleet's Autoscaling.
type AutoscalingSource interface {
	Autoscaling(ctx context.Context, fleet string) (Autoscaling, error)
}

// defaultScaleDownWindow is the HPA's scale-down stabilization window when
// the behavior leaves it unset.
const defaultScaleDownWindow = 300 * time.Second

// ScaledObjects reads the fleets' ScaledObjects (keda.sh/v1alpha1) of one
// namespace through the API server: the ones whose external or
// external-push trigger names the fleet with the desiredReplicas metric.
// It needs get and list on scaledobjects.keda.sh, read-only. A list is
// reused for ttl, so the API server sees at most one request per ttl
// whatever the number of fleets and polls.
//
// Reading the ScaledObject, rather than a copy of minReplicaCount in the
// trigger metadata, keeps one source of truth: the value KEDA acts on,
// also when someone edits the ScaledObject by hand.
type ScaledObjects struct {
	client    rest.Interface
	namespace string
	ttl       time.Duration
	now       func() time.Time

	mu     sync.Mutex
	listed time.Time
	items  []scaledObject
	err    error // the last list's, also kept for ttl
}

// NewScaledObjects returns a ScaledObjects reading namespace with client,
// a REST client of the API server (any group: requests use absolute paths).
func NewScaledObjects(client rest.Interface, namespace string, ttl time.Duration) *ScaledObjects {
	return &ScaledObjects{client: client, namespace: namespace, ttl: ttl, now: time.Now}
}

// scaledObject holds the fields of a ScaledObject the hook reads.
type scaledObject struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		MinReplicaCount *int32 `json:"minReplicaCount"`
		Advanced        *struct {
			HPA *struct {
				Behavior *struct {
					ScaleDown *struct {
						StabilizationWindowSeconds *int32 `json:"stabilizationWindowSeconds"`
					} `json:"scaleDown"`
				} `json:"behavior"`
			} `json:"horizontalPodAutoscalerConfig"`
		} `json:"advanced"`
		Triggers []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

func (o scaledObject) scales(fleet string) bool {
	for _, t := range o.Spec.Triggers {
		if (t.Type == "external" || t.Type == "external-push") && t.Metadata["fleet"] == fleet &&
			(t.Metadata["metric"] == "" || t.Metadata["metric"] == "desiredReplicas") {
			return true
		}
	}
	return false
}

func (o scaledObject) window() time.Duration {
	a := o.Spec.Advanced
	if a == nil || a.HPA == nil || a.HPA.Behavior == nil || a.HPA.Behavior.ScaleDown == nil ||
		a.HPA.Behavior.ScaleDown.StabilizationWindowSeconds == nil {
		return defaultScaleDownWindow
	}
	return time.Duration(*a.HPA.Behavior.ScaleDown.StabilizationWindowSeconds) * time.Second
}

// Autoscaling returns fleet's floor and window. Several ScaledObjects of
// one fleet (there should be one) give the highest minimum and the
// shortest window, the cautious reading of each. No ScaledObject: Known
// false.
func (s *ScaledObjects) Autoscaling(ctx context.Context, fleet string) (Autoscaling, error) {
	items, err := s.list(ctx)
	if err != nil {
		return Autoscaling{}, err
	}
	var a Autoscaling
	for _, o := range items {
		if !o.scales(fleet) {
			continue
		}
		m := 0
		if o.Spec.MinReplicaCount != nil {
			m = int(*o.Spec.MinReplicaCount)
		}
		if !a.Known || m > a.MinReplicas {
			a.MinReplicas = m
		}
		if w := o.window(); !a.Known || w < a.ScaleDownWindow {
			a.ScaleDownWindow = w
		}
		a.Known = true
	}
	return a, nil
}

func (s *ScaledObjects) list(ctx context.Context) ([]scaledObject, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := s.now(); !s.listed.IsZero() && now.Sub(s.listed) < s.ttl {
		return s.items, s.err
	}
	s.listed = s.now()
	raw, err := s.client.Get().AbsPath("/apis/keda.sh/v1alpha1/namespaces", s.namespace, "scaledobjects").DoRaw(ctx)
	if err != nil {
		s.items, s.err = nil, fmt.Errorf("listing ScaledObjects in %s: %w", s.namespace, err)
		return nil, s.err
	}
	var l struct {
		Items []scaledObject `json:"items"`
	}
	if err := json.Unmarshal(raw, &l); err != nil {
		s.items, s.err = nil, fmt.Errorf("decoding ScaledObjects in %s: %w", s.namespace, err)
		return nil, s.err
	}
	s.items, s.err = l.Items, nil
	return s.items, nil
}
