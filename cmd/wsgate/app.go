package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"

	"github.com/wsgate/wsgate/buildinfo"
	"github.com/wsgate/wsgate/httplimit"
	"github.com/wsgate/wsgate/store"
)

// The fx building blocks every command shares.

// fxLogger shows fx's own wiring events only at debug level.
func fxLogger(log *slog.Logger) fx.Option {
	if !log.Enabled(context.Background(), slog.LevelDebug) {
		return fx.NopLogger
	}
	return fx.WithLogger(func() fxevent.Logger { return &fxevent.SlogLogger{Logger: log.With("component", "fx")} })
}

// runApp starts app, waits for SIGINT/SIGTERM and stops it, returning the
// first error: a bind or configuration failure reaches the user as one line.
func runApp(app *fx.App) error { return runAppDraining(app, nil) }

// runAppDraining is runApp with drain run after the signal and before any
// component stops (their servers still answer meanwhile).
func runAppDraining(app *fx.App, drain func()) error {
	if err := app.Err(); err != nil {
		return rootCause(err)
	}
	if err := app.Start(context.Background()); err != nil {
		return rootCause(err)
	}
	<-app.Wait()
	if drain != nil {
		drain()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return app.Stop(ctx)
}

func newRegistry() (*prometheus.Registry, prometheus.Registerer, prometheus.Gatherer) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildinfo.Collector())
	return reg, reg, reg
}

// openRedis connects to Redis as cfg says and closes the client when the
// app stops.
func openRedis(lc fx.Lifecycle, cfg store.RedisConfig) (redis.UniversalClient, error) {
	rdb, err := store.NewRedisClient(cfg)
	if err != nil {
		return nil, err
	}
	lc.Append(fx.StopHook(rdb.Close))
	return rdb, nil
}

// background runs loop from the app's start until its stop, and waits for
// it to return before the app stops.
func background(lc fx.Lifecycle, loop func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			go func() { defer close(done); loop(ctx) }()
			return nil
		},
		OnStop: func(context.Context) error { cancel(); <-done; return nil },
	})
}

// serveHTTP binds addr when the app starts (so a busy port fails the start)
// and shuts the server down gracefully when it stops.
func serveHTTP(lc fx.Lifecycle, name, addr string, h http.Handler, log *slog.Logger) {
	srv := httplimit.Default.Server(h)
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("%s listener: %w", name, err)
			}
			log.Info("listening", "server", name, "addr", ln.Addr().String())
			go func() {
				if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					log.Error("server stopped", "server", name, "err", err)
				}
			}()
			return nil
		},
		OnStop: srv.Shutdown,
	})
}

// rootCause strips the dependency-injection layers off err ("could not
// build arguments for function ...: failed to build ..."): what the user
// needs is the first error of the chain that a constructor or hook
// returned, which names the flag or field.
func rootCause(err error) error {
	for e := err; e != nil; e = errors.Unwrap(e) {
		t := reflect.TypeOf(e)
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if p := t.PkgPath(); !strings.HasPrefix(p, "go.uber.org/dig") && !strings.HasPrefix(p, "go.uber.org/fx") {
			return e
		}
	}
	return err
}
