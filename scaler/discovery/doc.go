// Package discovery keeps each fleet's pod registry in Redis from
// Kubernetes: client-go informers follow the EndpointSlices of the fleet's
// backend Service, and a Registry merges what they see with the draining
// flags set by the pod-deletion-cost hook (package podcost) before it, and
// only it, writes the registry with store.Store.SetPods.
//
// Writes replace the whole registry and are idempotent, so several scaler
// replicas may run. The Registry re-publishes on every change, when the
// fleet's epoch changes (Redis restarted empty) and periodically.
package discovery
