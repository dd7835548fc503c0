package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/wsgate/wsgate/buildinfo"
	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/scaler"
	"github.com/wsgate/wsgate/tracker"
)

// stampBuild sets the values the Makefile's -ldflags -X would.
func stampBuild(t *testing.T) buildinfo.Info {
	t.Helper()
	old := [3]string{buildinfo.Version, buildinfo.Revision, buildinfo.Date}
	buildinfo.Version, buildinfo.Revision, buildinfo.Date = "0.1.0-dev.0123456789ab", "0123456789abcdef0123456789abcdef01234567", "2026-12-06T20:00:00Z"
	t.Cleanup(func() { buildinfo.Version, buildinfo.Revision, buildinfo.Date = old[0], old[1], old[2] })
	return buildinfo.Read()
}

func TestVersionPrintsTheStamp(t *testing.T) {
	want := stampBuild(t)
	var out bytes.Buffer
	if err := runVersion(&out, nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"wsgate " + want.Version + "\n", want.Revision, want.Date, runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("wsgate version lacks %q:\n%s", s, out.String())
		}
	}
	out.Reset()
	if err := runVersion(&out, []string{"--json"}); err != nil {
		t.Fatal(err)
	}
	var got buildinfo.Info
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || got != want {
		t.Errorf("wsgate version --json = %s (%v), want %+v", out.String(), err, want)
	}
	if err := runVersion(io.Discard, []string{"extra"}); err == nil {
		t.Error("wsgate version extra: no error")
	}
}

// TestBuildInfoOnFirstScrape starts the tracker's and the scaler's
// components (the providers runTracker and scalerApp use), and scrapes
// their telemetry listener once: wsgate_build_info is there from the start,
// not only once some component has done work.
func TestBuildInfoOnFirstScrape(t *testing.T) {
	want := stampBuild(t)
	series := fmt.Sprintf("wsgate_build_info{goversion=%q,revision=%q,version=%q} 1\n", want.GoVersion, want.Revision, want.Version)
	fleet := fleets.Fleet{Name: "chat", Service: "chat"}.WithDefaults()
	trackerFlags := trackerFlags{embedded: true, redis: &redisOptions{}, listen: "127.0.0.1:0", telemetry: "127.0.0.1:0",
		cfg: tracker.Config{InstanceID: "pod-a", Fleets: []fleets.Fleet{fleet}}}
	scalerFlags := scalerFlags{redis: &redisOptions{addrs: "127.0.0.1:1"}, listen: "127.0.0.1:0", telemetry: "127.0.0.1:0",
		reapInterval: time.Hour, metricsInterval: time.Hour, cfg: scaler.Config{Fleets: []fleets.Fleet{fleet}, Settle: time.Second, ReadinessRatio: 0.95}}
	for name, app := range map[string]func(*slog.Logger) fx.Option{
		"tracker": func(log *slog.Logger) fx.Option {
			return fx.Options(fx.Supply(trackerFlags, log), fx.Provide(newRegistry, newRedis, newStore, newTracker), fx.Invoke(serveAdmission))
		},
		"scaler": func(log *slog.Logger) fx.Option { return scalerApp(scalerFlags, log) },
	} {
		t.Run(name, func(t *testing.T) {
			logs := &lockedBuffer{}
			a := fx.New(fx.NopLogger, app(slog.New(slog.NewJSONHandler(logs, nil))))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := a.Start(ctx); err != nil {
				t.Fatal(err)
			}
			defer a.Stop(ctx)
			addr := listenAddr(t, logs.String(), "telemetry")
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), series) {
				t.Errorf("first scrape of %s lacks %q", addr, series)
			}
		})
	}
}

// listenAddr is the address serveHTTP logged for server.
func listenAddr(t *testing.T, logs, server string) string {
	t.Helper()
	for _, line := range strings.Split(logs, "\n") {
		var rec struct{ Msg, Server, Addr string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" && rec.Server == server {
			return rec.Addr
		}
	}
	t.Fatalf("no %s listener in the logs:\n%s", server, logs)
	return ""
}
