// Package buildinfo says which build of wsgate is running: the version,
// the commit and the commit's time, stamped at link time by the Makefile
// (-ldflags -X), and exported to Prometheus as wsgate_build_info.
//
// The date is the commit's time, not the build's, so that two builds of
// one commit are byte for byte the same (the image's digest depends on it).
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Set by the Makefile with -ldflags "-X github.com/wsgate/wsgate/buildinfo.Version=...".
// Left empty by a plain `go build`, which Read then fills from the VCS
// stamp the Go toolchain embeds.
var (
	// Version is the release (a tag such as 0.1.0), or the chart's
	// appVersion followed by -dev.<commit> for a build between releases.
	Version string
	// Revision is the full commit hash.
	Revision string
	// Date is the commit time, RFC 3339 in UTC.
	Date string
)

// Info is one build's identity, as `wsgate version --json` prints it.
type Info struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Date      string `json:"date"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Read returns this binary's build information: the stamped values, else
// what the Go toolchain recorded in a checkout (a pseudo-version, the
// commit and its time), else "unknown".
func Read() Info {
	i := Info{Version: Version, Revision: Revision, Date: Date,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		// Since Go 1.24 a build in a checkout has a pseudo-version
		// (v0.0.0-<time>-<commit>[+dirty]); a test binary has "(devel)".
		if i.Version == "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && i.Revision == "":
				i.Revision = s.Value
			case s.Key == "vcs.time" && i.Date == "":
				i.Date = s.Value
			}
		}
	}
	for _, s := range []*string{&i.Version, &i.Revision, &i.Date} {
		if *s == "" {
			*s = "unknown"
		}
	}
	return i
}

// Time is the commit time, or the zero time when it is unknown.
func (i Info) Time() time.Time {
	t, _ := time.Parse(time.RFC3339, i.Date)
	return t
}

// Collector returns the wsgate_build_info gauge: always 1, labelled with
// the version, the revision and the Go version, so that dashboards can
// join it to any other series of the same instance and tell which build
// each pod runs. Register it on the component's own registry.
func Collector() prometheus.Collector {
	i := Read()
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "wsgate_build_info",
		Help:        "The running build of wsgate: always 1, its labels say which version, commit and Go release.",
		ConstLabels: prometheus.Labels{"version": i.Version, "revision": i.Revision, "goversion": i.GoVersion},
	}, func() float64 { return 1 })
}
