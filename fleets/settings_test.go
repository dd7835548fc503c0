package fleets_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsgate/wsgate/fleets"
)

const oneFleet = "fleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n"

// TestSettingsAreTheFilesTopLevel: instanceTTL and expiredInstances sit
// beside fleets:, as written (zero when left out), with their lines.
func TestSettingsAreTheFilesTopLevel(t *testing.T) {
	f, err := fleets.Decode("fleets.yaml", []byte("# fleet-wide\ninstanceTTL: 20s\n"+oneFleet+"expiredInstances: keep\n"))
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(f.InstanceTTL) != 20*time.Second || f.ExpiredInstances != fleets.ExpiredKeep {
		t.Errorf("settings %+v, want instanceTTL 20s, expiredInstances keep", f.Settings)
	}
	if f.Line("instanceTTL") != 2 || f.Line("expiredInstances") != 6 || f.Line("fleets") != 3 {
		t.Errorf("lines: instanceTTL %d, expiredInstances %d, fleets %d; want 2, 6, 3", f.Line("instanceTTL"), f.Line("expiredInstances"), f.Line("fleets"))
	}
	if len(f.Fleets) != 1 || f.Fleets[0].Name != "chat" || f.Fleets[0].MaxConnectionsPerPod != 2 {
		t.Errorf("fleets %+v, want chat with its defaults", f.Fleets)
	}

	f, err = fleets.Decode("fleets.yaml", []byte(oneFleet))
	if err != nil {
		t.Fatal(err)
	}
	if f.Settings != (fleets.Settings{}) || f.Line("instanceTTL") != 0 {
		t.Errorf("left out: %+v (line %d), want zero: a caller tells unset from set", f.Settings, f.Line("instanceTTL"))
	}
	if d := f.WithDefaults(); time.Duration(d.InstanceTTL) != fleets.DefaultInstanceTTL || d.ExpiredInstances != fleets.ExpiredKeep {
		t.Errorf("defaults %+v, want 10s and keep", d)
	}

	// JSON is YAML.
	f, err = fleets.Decode("fleets.json", []byte(`{"instanceTTL": "1m", "expiredInstances": "kube", "fleets": [{"name": "chat"}]}`))
	if err != nil || time.Duration(f.InstanceTTL) != time.Minute || f.ExpiredInstances != fleets.ExpiredKube {
		t.Errorf("JSON: %+v, %v", f.Settings, err)
	}
}

// TestSettingsErrorsNameTheLine: a wrong setting is reported like a wrong
// fleet field: file and line, the field, its value, what it wants; a
// misspelt one with the field it most likely means; a written zero is
// refused, never taken for the default.
func TestSettingsErrorsNameTheLine(t *testing.T) {
	for doc, want := range map[string]string{
		oneFleet + "instanceTtl: 20s\n":         `fleets.yaml:4: unknown field "instanceTtl" (did you mean "instanceTTL"?)`,
		oneFleet + "expiredInstance: keep\n":    `fleets.yaml:4: unknown field "expiredInstance" (did you mean "expiredInstances"?)`,
		oneFleet + "flets: []\n":                `fleets.yaml:4: unknown field "flets" (did you mean "fleets"?)`,
		oneFleet + "heartbeat: 2s\n":            `fleets.yaml:4: unknown field "heartbeat" (known: fleets, instanceTTL, expiredInstances)`,
		oneFleet + "instanceTTL: 0s\n":          `fleets.yaml:4: instanceTTL 0s: must be positive (leave it out for the default 10s)`,
		oneFleet + "instanceTTL: -5s\n":         `fleets.yaml:4: instanceTTL -5s: must be positive`,
		oneFleet + "instanceTTL: 10\n":          `fleets.yaml:4: instanceTTL 10: want a duration such as "5s"`,
		oneFleet + "instanceTTL: soon\n":        `fleets.yaml:4: instanceTTL "soon": want a duration such as "5s"`,
		oneFleet + "expiredInstances: forget\n": `fleets.yaml:4: expiredInstances "forget": want reap, keep or kube`,
		oneFleet + "expiredInstances: ''\n":     `fleets.yaml:4: expiredInstances "": want reap, keep or kube (leave it out for the default keep)`,
		oneFleet + "expiredInstances: 3\n":      `fleets.yaml:4: expiredInstances 3: want a string`,
		"instanceTTL: 10s\n":                    `fleets.yaml: no fleets defined`,
	} {
		_, err := fleets.Decode("fleets.yaml", []byte(doc))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Decode(%q) = %v, want an error starting %q", doc, err, want)
		}
		// ParseFile and Parse, which return the fleets only, refuse the
		// same file: a process that reads only the fleets never runs on a
		// file the others refuse.
		if _, err := fleets.ParseFile("fleets.yaml", []byte(doc)); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("ParseFile(%q) = %v, want an error starting %q", doc, err, want)
		}
		if _, err := fleets.Parse([]byte(doc)); err == nil {
			t.Errorf("Parse(%q) accepts it", doc)
		}
	}
}

// TestWatchFileHandsOverTheSettings: a reload's settings reach apply, and
// a content apply refuses is counted invalid and not retried until the
// file changes again.
func TestWatchFileHandsOverTheSettings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleets.yaml")
	v1 := []byte(oneFleet)
	if err := os.WriteFile(path, v1, 0o644); err != nil {
		t.Fatal(err)
	}
	got := make(chan fleets.File)
	refuse := make(chan bool, 1)
	m := fleets.NewReloadMetrics(nil, "test")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		fleets.WatchFile(ctx, path, v1, time.Millisecond, func(f fleets.File) error {
			got <- f
			if <-refuse {
				return errRefused
			}
			return nil
		}, m, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); <-done })

	write := func(doc string) {
		t.Helper()
		// Write then rename, as a ConfigMap update or an editor does: the
		// watcher never reads a half-written file.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("instanceTTL: 30s\n" + oneFleet)
	f := <-got
	refuse <- false
	if time.Duration(f.InstanceTTL) != 30*time.Second || f.Line("instanceTTL") != 1 {
		t.Errorf("apply got %+v (line %d), want instanceTTL 30s at line 1", f.Settings, f.Line("instanceTTL"))
	}
	write("instanceTTL: 40s\n" + oneFleet)
	f = <-got
	refuse <- true
	if time.Duration(f.InstanceTTL) != 40*time.Second {
		t.Errorf("apply got %+v, want instanceTTL 40s", f.Settings)
	}
	// The refused content is not offered again; the next change is.
	write("instanceTTL: 50s\n" + oneFleet)
	f = <-got
	refuse <- false
	if time.Duration(f.InstanceTTL) != 50*time.Second {
		t.Errorf("after a refusal apply got %+v, want the next change (50s)", f.Settings)
	}
	cancel()
	<-done
	if a, i := testutil.ToFloat64(m.Reloads.WithLabelValues("applied")), testutil.ToFloat64(m.Reloads.WithLabelValues("invalid")); a != 2 || i != 1 {
		t.Errorf("reloads: %v applied, %v invalid; want 2 and 1", a, i)
	}
	if testutil.ToFloat64(m.LastSuccessful) != 1 {
		t.Error("last reload successful is not 1 after the last change applied")
	}
}

var errRefused = os.ErrInvalid

// TestExampleShowsTheSettings: the example file, whose values are the
// defaults, shows the fleet-wide settings at their defaults.
func TestExampleShowsTheSettings(t *testing.T) {
	data, err := os.ReadFile("fleets.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleets.Decode("fleets.example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if f.Line("instanceTTL") == 0 || f.Line("expiredInstances") == 0 || f.Settings != (fleets.Settings{}).WithDefaults() {
		t.Errorf("the example sets %+v, want both settings shown at their defaults", f.Settings)
	}
}
