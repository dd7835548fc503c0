// Package scaler is wsgate's KEDA external scaler: a gRPC service
// (externalscaler.proto) that turns one fleet's shared state in Redis —
// live connections, pods, the 5 min / 15 min / 1 h rejection windows — into
// the metrics KEDA scales the backend (and Envoy) on.
//
// The policy is a pure function (Decide, documented in POLICY.md). The
// server holds its metrics while Redis' counts are incomplete after a data
// loss (readiness), never reports a scale-down on such data, records every
// trigger's decision in its own hash (decision.go; store.Keys.Scaler),
// reaps expired tracker instances, and leaves the preparation of a
// scale-down to a ScaleDownGate, handed the highest fresh recommendation
// of the fleet's triggers.
package scaler
