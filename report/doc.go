// Package report builds the operators' views of `wsgate metrics` from the
// state a fleet keeps in Redis: connections per pod, rejections by reason and
// window, the scale-down order and the scaler's recommendation, the pod x
// instance matrix and readiness. It reads through its Store (*store.Store:
// one Snapshot script per fleet, and the scaler's records with
// ScalerState), never writes, and renders
// either aligned text tables for people or JSON (model.go, SchemaVersion)
// for scripts.
package report
