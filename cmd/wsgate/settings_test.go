package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/fx/fxtest"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/promtest"
	"github.com/wsgate/wsgate/tracker"
)

// TestSettingsComeFromTheFleetsFile: without the deprecated flags the
// tracker and the scaler hold the fleets file's settings, and an error about
// one names the file, its line and the field.
func TestSettingsComeFromTheFleetsFile(t *testing.T) {
	file := fleetsFile(t, "instanceTTL: 4s\nexpiredInstances: kube\nfleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n")
	err := runTracker([]string{"--config", file, "--check-config", "--heartbeat", "5s"})
	if want := "--config " + file + ":1: instanceTTL 4s: must be longer than --heartbeat 5s"; err == nil || err.Error() != want {
		t.Errorf("tracker: %v, want %q", err, want)
	}
	err = runScaler([]string{"--config", file, "--check-config"})
	if want := "--config " + file + ":2: expiredInstances kube: Kubernetes judges the instances only with --kube"; err == nil || err.Error() != want {
		t.Errorf("scaler: %v, want %q", err, want)
	}

	// Both resolve the same file to the same settings.
	file = fleetsFile(t, "instanceTTL: 30s\nexpiredInstances: keep\nfleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n")
	for _, bin := range []string{"tracker", "scaler"} {
		fs := flag.NewFlagSet(bin, flag.ContinueOnError)
		s := registerSettingFlags(fs, "", "")
		if err := parseFlags(fs, nil); err != nil {
			t.Fatal(err)
		}
		got, notes, err := s.resolve(file, decodeFile(t, file))
		if err != nil || time.Duration(got.InstanceTTL) != 30*time.Second || got.ExpiredInstances != fleets.ExpiredKeep || len(notes) != 0 {
			t.Errorf("%s: %+v, notes %v, %v; want the file's 30s and keep, no note", bin, got, notes, err)
		}
	}
}

func decodeFile(t *testing.T, path string) fleets.File {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleets.Decode(path, data)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestDeprecatedSettingFlagsOverride: a deprecated flag, on the command line
// or in WSGATE_*, wins over the file, and its note says what to write
// instead, or that the file says the same, or that the two disagree.
func TestDeprecatedSettingFlagsOverride(t *testing.T) {
	silent := fleetsFile(t, "fleets:\n- name: chat\n")
	ten := fleetsFile(t, "# fleet-wide\ninstanceTTL: 10s\nexpiredInstances: keep\nfleets:\n- name: chat\n")
	cases := []struct {
		name     string
		file     string
		args     []string
		env      map[string]string
		ttl      time.Duration
		expired  fleets.ExpiredMode
		notes    []string // each a substring of one note, in order
		disagree int      // how many notes a reload logs
	}{
		{name: "neither", file: silent, ttl: 10 * time.Second, expired: fleets.ExpiredKeep},
		{name: "file only", file: ten, ttl: 10 * time.Second, expired: fleets.ExpiredKeep},
		{name: "flag, file silent", file: silent, args: []string{"--instance-ttl", "20s"}, ttl: 20 * time.Second, expired: fleets.ExpiredKeep,
			notes: []string{"--instance-ttl is deprecated and goes away in the next release: write `instanceTTL: 20s` in the fleets file (" + silent + ") instead"}},
		{name: "flag agrees", file: ten, args: []string{"--instance-ttl", "10s", "--expired-instances", "keep"}, ttl: 10 * time.Second, expired: fleets.ExpiredKeep,
			notes: []string{"the fleets file (" + ten + ":2) sets instanceTTL 10s already; drop the flag", "the fleets file (" + ten + ":3) sets expiredInstances keep already"}},
		{name: "flags disagree", file: ten, args: []string{"--instance-ttl", "20s", "--expired-instances", "reap"}, ttl: 20 * time.Second, expired: fleets.ExpiredReap,
			notes: []string{
				"--instance-ttl 20s overrides the fleets file's instanceTTL 10s (" + ten + ":2): they disagree and the flag wins in this process",
				"--expired-instances reap overrides the fleets file's expiredInstances keep (" + ten + ":3): they disagree and the flag wins in this process",
			}, disagree: 2},
		{name: "environment disagrees", file: ten, env: map[string]string{"WSGATE_INSTANCE_TTL": "1m"}, ttl: time.Minute, expired: fleets.ExpiredKeep,
			notes: []string{"--instance-ttl 1m0s overrides the fleets file's instanceTTL 10s"}, disagree: 1},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			for _, k := range []string{"WSGATE_INSTANCE_TTL", "WSGATE_EXPIRED_INSTANCES"} {
				t.Setenv(k, c.env[k])
				if c.env[k] == "" {
					os.Unsetenv(k)
				}
			}
			fs := flag.NewFlagSet("tracker", flag.ContinueOnError)
			s := registerSettingFlags(fs, "", "")
			if err := parseFlags(fs, c.args); err != nil {
				t.Fatal(err)
			}
			file := decodeFile(t, c.file)
			got, notes, err := s.resolve(c.file, file)
			if err != nil {
				t.Fatal(err)
			}
			if time.Duration(got.InstanceTTL) != c.ttl || got.ExpiredInstances != c.expired {
				t.Errorf("settings %v %s, want %v %s", time.Duration(got.InstanceTTL), got.ExpiredInstances, c.ttl, c.expired)
			}
			if len(notes) != len(c.notes) {
				t.Fatalf("notes %q, want %d", notes, len(c.notes))
			}
			for i, n := range notes {
				if !strings.Contains(n.String(), c.notes[i]) {
					t.Errorf("note %q, want it to say %q", n, c.notes[i])
				}
				// Logged as a warning, its parts as attributes.
				var buf bytes.Buffer
				n.log(slog.New(slog.NewJSONHandler(&buf, nil)))
				var rec map[string]any
				if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
					t.Fatal(err)
				}
				if rec["level"] != "WARN" || rec["msg"] != n.String() || !strings.HasPrefix(fmt.Sprint(rec["flag"]), "--") || rec["field"] == "" {
					t.Errorf("logged %s, want a warning with flag and field", buf.Bytes())
				}
			}
			// The same file reloaded: nothing changes, only a
			// disagreement is logged again.
			disagree, err := s.reloadSettings(c.file, file, got)
			if err != nil || len(disagree) != c.disagree {
				t.Errorf("reload of the same file: %v, notes %q; want %d", err, disagree, c.disagree)
			}
		})
	}

	// The flags' own values are checked, naming the file's default.
	for args, want := range map[string]string{
		"--instance-ttl=0s":          "--instance-ttl 0s: must be positive (leave it out for the fleets file's instanceTTL, default 10s)",
		"--instance-ttl=-1s":         "--instance-ttl -1s: must be positive",
		"--expired-instances=forget": `--expired-instances "forget": want reap, keep or kube`,
	} {
		for _, run := range []func([]string) error{runTracker, runScaler} {
			if err := run([]string{"--config", silent, "--check-config", args}); err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("%s: %v, want an error starting %q", args, err, want)
			}
		}
	}

	// --check-config makes no logger: it prints the notes.
	var err error
	out := stderrOf(t, func() { err = runTracker([]string{"--config", ten, "--check-config", "--instance-ttl", "20s"}) })
	if err != nil || !strings.Contains(out, "warning: --instance-ttl 20s overrides the fleets file's instanceTTL 10s ("+ten+":2)") {
		t.Errorf("--check-config with a disagreeing flag: %v, printed %q", err, out)
	}
}

// TestReloadOfASettingIsRefusedWhole: the tracker takes its settings at
// start, so a changed file that changes one is refused, its fleets
// included (never half-applied), and counted; a change that keeps them
// applies, and so does one of a setting a flag overrides.
func TestReloadOfASettingIsRefusedWhole(t *testing.T) {
	for _, override := range []bool{false, true} {
		t.Run(fmt.Sprint("override=", override), func(t *testing.T) {
			v1 := "instanceTTL: 10s\nfleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n"
			path := fleetsFile(t, v1)
			fs := flag.NewFlagSet("tracker", flag.ContinueOnError)
			f := trackerFlags{settings: registerSettingFlags(fs, "", ""), config: path, configData: []byte(v1), configCheck: time.Millisecond}
			var args []string
			if override {
				args = []string{"--instance-ttl", "10s"}
			}
			if err := parseFlags(fs, args); err != nil {
				t.Fatal(err)
			}
			f.file = decodeFile(t, path)
			settings, _, err := f.settings.resolve(path, f.file)
			if err != nil {
				t.Fatal(err)
			}
			f.cfg = tracker.Config{InstanceID: "e1", Fleets: f.file.Fleets, InstanceTTL: time.Duration(settings.InstanceTTL), ExpiredInstances: settings.ExpiredInstances}
			mr := miniredis.RunT(t)
			rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { rdb.Close() })
			tr, err := tracker.New(f.cfg, store.NewStore(rdb, "wsgate").WithoutRestartDetection())
			if err != nil {
				t.Fatal(err)
			}
			logs := make(chan slog.Record, 64)
			reg := prometheus.NewRegistry()
			lc := fxtest.NewLifecycle(t)
			watchTrackerConfig(lc, f, tr, reg, slog.New(recordHandler(logs)))
			lc.RequireStart()
			t.Cleanup(func() { lc.RequireStop() })

			write := func(doc string) {
				t.Helper()
				if err := os.WriteFile(path+".new", []byte(doc), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(path+".new", path); err != nil {
					t.Fatal(err)
				}
			}
			await := func(msg string) slog.Record {
				t.Helper()
				for {
					select {
					case r := <-logs:
						if strings.HasPrefix(r.Message, msg) {
							return r
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("no log %q", msg)
					}
				}
			}
			// A new TTL and a new fleet together.
			write("instanceTTL: 20s\nfleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n- name: demo\n  pods: ['10.0.0.2:80']\n")
			if override {
				// The flag holds the TTL: nothing to restart for, the
				// fleet applies, and the disagreement is said.
				await("--instance-ttl 10s overrides the fleets file's instanceTTL 20s")
				await("fleets file applied")
				if got := tr.Fleets(); !slices.Equal(got, []string{"chat", "demo"}) {
					t.Errorf("fleets %v, want chat and demo", got)
				}
				return
			}
			r := await("fleets file changed but is invalid")
			var errText string
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "err" {
					errText = a.Value.String()
				}
				return true
			})
			if want := path + ":1: instanceTTL 20s, was 10s: takes a restart, so the changed file is refused whole, fleets included"; !strings.HasPrefix(errText, want) {
				t.Errorf("refusal %q, want it to start %q", errText, want)
			}
			if got := tr.Fleets(); !slices.Equal(got, []string{"chat"}) {
				t.Errorf("fleets %v after the refused change, want chat alone: half-applied", got)
			}
			if got := promtest.Samples(t, reg)["wsgate_tracker_config_reloads_total{result=invalid}"]; got != 1 {
				t.Errorf("reloads invalid: %v, want 1", got)
			}
			// The fleet alone, the TTL as running: applied.
			write("instanceTTL: 10s\nfleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n- name: demo\n  pods: ['10.0.0.2:80']\n")
			await("fleets file applied")
			if got := tr.Fleets(); !slices.Equal(got, []string{"chat", "demo"}) {
				t.Errorf("fleets %v, want chat and demo", got)
			}
		})
	}
}

// recordHandler sends every record to ch.
type recordHandler chan<- slog.Record

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h <- r.Clone():
	default: // the test has stopped reading
	}
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }
