// Package keda holds no code: its YAML files are KEDA ScaledObject and
// TriggerAuthentication examples for wsgate's external scaler, and its test
// decodes each strictly into KEDA's own API types.
package keda
