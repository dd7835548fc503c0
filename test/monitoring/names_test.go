package monitoring

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wsgate/wsgate/scaler/discovery"
	"github.com/wsgate/wsgate/scaler/podcost"
)

// kubeOnly are the prefixes of the scaler's metrics that exist only with
// --kube (pod discovery and the deletion-cost hook, cmd/wsgate/kube.go).
var kubeOnly = []string{"wsgate_scaler_discovery_", "wsgate_scaler_podcost_"}

func isKubeOnly(name string) bool {
	for _, p := range kubeOnly {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// TestNamesExistFromFirstScrape: every metric a dashboard or rule reads is
// exported by the real tracker and scaler before any admission was asked
// for, so "no data" always means something, never "not yet". Envoy's and
// kube-state-metrics' names are checked against the lists recorded from
// their sources in testdata.
func TestNamesExistFromFirstScrape(t *testing.T) {
	tool(t, "redis-server", "redis-server")
	used := usedNames(t)
	s := startStack(t, "127.0.0.1:9")
	exported := map[string]bool{}
	for _, url := range []string{"http://" + s.trackerTelem + "/metrics", "http://" + s.scalerTelem + "/metrics"} {
		for n := range scrapeNames(t, url) {
			exported[n] = true
		}
	}
	envoy := recorded(t, "envoy-metrics.txt")
	ksm := recorded(t, "kube-state-metrics.txt")
	kube := kubeCollectorNames()

	var missing []string
	for name, where := range used {
		var ok bool
		var from string
		switch {
		case strings.HasPrefix(name, "envoy_"):
			ok, from = envoy[name], "testdata/envoy-metrics.txt"
		case strings.HasPrefix(name, "kube_"):
			ok, from = ksm[name], "testdata/kube-state-metrics.txt"
		case isKubeOnly(name):
			// The scaler registers these only with --kube, and there is
			// no API server here: check the collectors it registers then.
			ok, from = kube[name], "the scaler's --kube collectors (scaler/discovery, scaler/podcost)"
		case strings.HasPrefix(name, "wsgate_"):
			ok, from = exported[name], "the first scrape of tracker and scaler"
		default:
			from = "any known exporter (wsgate_*, envoy_*, kube_*)"
		}
		if !ok {
			missing = append(missing, fmt.Sprintf("%s: not in %s; used by\n      %s", name, from, strings.Join(where, "\n      ")))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%d metric names the dashboards or rules use are not exported:\n  %s", len(missing), strings.Join(missing, "\n  "))
	}
}

// usedNames maps every metric name of the dashboards and rules to where it
// is used.
func usedNames(t *testing.T) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	for _, e := range allExprs(t) {
		p, _, err := e.parse(parseValues)
		if err != nil {
			t.Fatalf("%s: %v (TestExpressionsParse says more)", e.where, err)
		}
		for _, n := range metricNames(p) {
			used[n] = append(used[n], e.where)
		}
	}
	return used
}

// scrapeNames returns the series names url exports: each family's name,
// and a histogram's _bucket, _sum and _count.
func scrapeNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	names := map[string]bool{}
	for name, f := range fams {
		if len(f.GetMetric()) == 0 {
			continue
		}
		names[name] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name+"_sum"], names[name+"_count"] = true, true
		}
	}
	return names
}

// recorded reads a testdata list: the first field of each line that is not
// a comment.
func recorded(t *testing.T, file string) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names[strings.Fields(line)[0]] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// descRecorder is a Registerer that only notes the names its collectors
// describe.
type descRecorder map[string]bool

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r descRecorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r[m[1]] = true
		}
	}
	return nil
}

func (r descRecorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r descRecorder) Unregister(prometheus.Collector) bool { return true }

// kubeCollectorNames are the names of the collectors the scaler registers
// with --kube.
func kubeCollectorNames() map[string]bool {
	r := descRecorder{}
	discovery.NewMetrics(r)
	podcost.NewMetrics(r)
	return r
}
