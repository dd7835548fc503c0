// Package podcost prepares a scale-down so that it cuts as few live
// connections as possible: when the scaler's recommendation falls below the
// fleet's ready replicas, the Hook marks the emptiest pods draining (through
// the discovery Registry, so admission stops placing connections there),
// patches controller.kubernetes.io/pod-deletion-cost on the fleet's pods
// (fewest connections = lowest cost), and holds the lower recommendation
// until its own pod informer has observed the patched values and a settle
// delay (less the HPA's stabilization window) has passed. It never drains
// below the HPA's minimum: the ScaledObject's minReplicaCount, and at least
// one pod, which KEDA itself removes when it deactivates an idle fleet. When
// it cannot read that minimum it holds the scale-down and drains nothing:
// it drains exactly the pods the HPA will remove, or none. A rising
// recommendation undrains at once and removes the costs.
//
// KUBERNETES.md says what Kubernetes promises about the annotation and what
// it does not, and the RBAC the hook needs.
package podcost
