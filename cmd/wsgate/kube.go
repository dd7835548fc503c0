package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/scaler/podcost"
	"github.com/wsgate/wsgate/store"
)

// kubeFlags turn on what the scaler does with the Kubernetes API: pod
// discovery from EndpointSlices and the pod-deletion-cost hook.
type kubeFlags struct {
	enabled    bool
	namespace  string
	kubeconfig string
	settle     time.Duration // the hook's settle delay
}

// kubeModule wires discovery and the deletion-cost hook; the hook reaches
// the scaler as its ScaleDownGate.
func kubeModule() fx.Option {
	return fx.Options(
		fx.Provide(newKubeClient, newPodRegistry, newDiscovery, newPodCostHook,
			func(d *discovery.Discovery) scaler.InstanceCounter { return d },
			func(d *discovery.Discovery) scaler.InstanceJudge { return d },
			func(d *discovery.Discovery) syncer { return d }),
		fx.Invoke(runKube),
	)
}

func newKubeClient(f scalerFlags) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if f.kube.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", f.kube.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client (--kube): %w", err)
	}
	return kubernetes.NewForConfig(cfg)
}

func newPodRegistry(store *store.Store, reg prometheus.Registerer, log *slog.Logger) *discovery.Registry {
	return discovery.NewRegistry(store, discovery.WithLogger(log), discovery.WithMetrics(discovery.NewMetrics(reg)))
}

func newDiscovery(client kubernetes.Interface, f scalerFlags, pods *discovery.Registry, log *slog.Logger) (*discovery.Discovery, error) {
	return discovery.New(client, f.kube.namespace, f.cfg.Fleets, pods, 0, discovery.WithDiscoveryLogger(log))
}

// podInformers is the namespaced informer factory of the hook's pod cache.
type podInformers struct {
	informers.SharedInformerFactory
}

func newPodCostHook(client kubernetes.Interface, f scalerFlags, store *store.Store, pods *discovery.Registry, reg prometheus.Registerer, log *slog.Logger) (scaler.ScaleDownGate, podInformers) {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(f.kube.namespace))
	hook := podcost.New(client, factory.Core().V1().Pods(), f.kube.namespace, store, pods,
		podcost.WithLogger(log), podcost.WithMetrics(podcost.NewMetrics(reg)), podcost.WithSettle(f.kube.settle))
	return hook, podInformers{factory}
}

func runKube(lc fx.Lifecycle, pods *discovery.Registry, disc *discovery.Discovery, inf podInformers, log *slog.Logger) {
	background(lc, pods.Run)
	background(lc, func(ctx context.Context) {
		if err := disc.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("pod discovery stopped", "err", err)
		}
	})
	stop := make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			inf.Start(stop)
			return nil
		},
		// Shutdown waits for the informers, which end when stop closes.
		OnStop: func(context.Context) error { close(stop); inf.Shutdown(); return nil },
	})
}
