//go:build tools

// Package tools pins the control plane commands test/kube builds with
// `go build k8s.io/kubernetes/cmd/...` in this module.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
