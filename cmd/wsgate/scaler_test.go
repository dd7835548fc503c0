package main

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/fx"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/scaler/podcost"
)

// TestScalerGraph builds the scaler's components (without starting them)
// with and without --kube: with it the deletion-cost hook must reach the
// scaler as its gate, not be silently left out as an optional dependency.
func TestScalerGraph(t *testing.T) {
	for _, kube := range []bool{false, true} {
		f := scalerFlags{redis: &redisOptions{addrs: "127.0.0.1:1"}, kube: kubeFlags{enabled: kube, namespace: "ns"},
			listen: "127.0.0.1:0", telemetry: "127.0.0.1:0", reapInterval: time.Hour, metricsInterval: time.Hour,
			cfg: scaler.Config{Fleets: []fleets.Fleet{fleets.Fleet{Name: "chat", Service: "chat"}.WithDefaults()}, Settle: time.Second, ReadinessRatio: 0.95}}
		var gate scaler.ScaleDownGate
		var counter scaler.InstanceCounter
		opts := []fx.Option{fx.NopLogger, scalerApp(f, slog.New(slog.DiscardHandler)), fx.Invoke(func(d scalerDeps) { gate, counter = d.Gate, d.Instances })}
		if kube {
			opts = append(opts, fx.Replace(fx.Annotate(fake.NewClientset(), fx.As(new(kubernetes.Interface)))))
		}
		app := fx.New(opts...)
		if err := app.Err(); err != nil {
			t.Fatalf("kube=%v: %v", kube, err)
		}
		// The app starts and stops in time: informers (on the fake
		// clientset) and background loops all end.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := app.Start(ctx); err != nil {
			t.Fatalf("kube=%v: start: %v", kube, err)
		}
		if err := app.Stop(ctx); err != nil {
			t.Fatalf("kube=%v: stop: %v", kube, err)
		}
		cancel()
		_, isHook := gate.(*podcost.Hook)
		_, isDiscovery := counter.(*discovery.Discovery)
		if isHook != kube || isDiscovery != kube {
			t.Errorf("kube=%v: scaler gate %T, instance counter %T", kube, gate, counter)
		}
	}
}

func TestScalerKubeNeedsANamespace(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	err := runScaler([]string{"--kube", "--config", "x"})
	if err == nil || !strings.Contains(err.Error(), "--namespace") {
		t.Fatalf("--kube without a namespace: %v", err)
	}
}

type syncFlag bool

func (f *syncFlag) Synced() bool { return bool(*f) }

// TestScalerReadyz: ready when Redis answers and discovery (with --kube) has
// listed once.
func TestScalerReadyz(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	synced := syncFlag(false)
	h := scalerTelemetry(rdb, prometheus.NewRegistry(), &synced)
	status := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		return rec.Code
	}
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("before discovery listed: %d, want 503", got)
	}
	synced = true
	if got := status(); got != http.StatusOK {
		t.Errorf("discovery listed, Redis up: %d, want 200", got)
	}
	mr.Close()
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("Redis down: %d, want 503", got)
	}
	if got := scalerTelemetry(rdb, prometheus.NewRegistry(), nil); got == nil {
		t.Fatal("no handler without discovery")
	}
}
