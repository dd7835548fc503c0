//go:build deps

// Package deps pins the project's chosen dependencies in go.mod while the
// packages that use them are being written; it is never built.
package deps

import (
	_ "github.com/alicebob/miniredis/v2"
	_ "github.com/coder/websocket"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	_ "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	_ "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/redis/go-redis/v9"
	_ "github.com/yuin/gopher-lua"
	_ "go.uber.org/fx"
	_ "golang.org/x/time/rate"
	_ "google.golang.org/grpc"
	_ "k8s.io/client-go/kubernetes"
	_ "sigs.k8s.io/yaml"
)
