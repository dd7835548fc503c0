package buildinfo_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsgate/wsgate/buildinfo"
)

// stamp sets the link-time variables as the Makefile's -X flags would.
func stamp(t *testing.T, version, revision, date string) {
	t.Helper()
	old := [3]string{buildinfo.Version, buildinfo.Revision, buildinfo.Date}
	buildinfo.Version, buildinfo.Revision, buildinfo.Date = version, revision, date
	t.Cleanup(func() { buildinfo.Version, buildinfo.Revision, buildinfo.Date = old[0], old[1], old[2] })
}

func TestReadReturnsTheStampedValues(t *testing.T) {
	stamp(t, "0.1.0", "0123456789abcdef0123456789abcdef01234567", "2026-12-06T20:00:00Z")
	i := buildinfo.Read()
	want := buildinfo.Info{Version: "0.1.0", Revision: "0123456789abcdef0123456789abcdef01234567", Date: "2026-12-06T20:00:00Z",
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if i != want {
		t.Errorf("Read() = %+v, want %+v", i, want)
	}
	if got := i.Time(); !got.Equal(time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC)) {
		t.Errorf("Time() = %v", got)
	}
}

// TestUnstampedSaysUnknown: a test binary has no VCS stamp and no -X
// values; nothing is left empty (an empty label would vanish from the series).
func TestUnstampedSaysUnknown(t *testing.T) {
	stamp(t, "", "", "")
	i := buildinfo.Read()
	if i.Version == "" || i.Revision == "" || i.Date == "" {
		t.Errorf("Read() = %+v: an empty field", i)
	}
}

func TestCollectorExportsBuildInfo(t *testing.T) {
	stamp(t, "0.2.0-dev.abc", "abc", "2026-12-06T20:00:00Z")
	reg := prometheus.NewRegistry()
	reg.MustRegister(buildinfo.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "wsgate_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathered %v, want one wsgate_build_info series", mfs)
	}
	m := mfs[0].GetMetric()[0]
	if v := m.GetGauge().GetValue(); v != 1 {
		t.Errorf("value %v, want 1", v)
	}
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	want := map[string]string{"version": "0.2.0-dev.abc", "revision": "abc", "goversion": runtime.Version()}
	if len(labels) != len(want) {
		t.Errorf("labels %v, want %v", labels, want)
	}
	for k, v := range want {
		if labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, labels[k], v)
		}
	}
}
