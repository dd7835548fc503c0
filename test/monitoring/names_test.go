package monitoring

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

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

// askedByKEDA are the scaler's names that say what it answered KEDA: they
// exist once KEDA asked, never before, and there is no value to give them
// until then (wsgate_scaler_reported_value{metric="desiredReplicas"} at 0
// would be a recommendation nobody made). No rule may read them, and a
// dashboard panel that does says KEDA in its title; the fleet's state
// without KEDA is the scaler's wsgate_scaler_fleet_* gauges.
var askedByKEDA = map[string]bool{"wsgate_scaler_reported_value": true}

// perRegistryPod are the scaler's names with a series per pod of the
// fleet's registry in Redis: there is none before the registry holds a pod
// (the trackers or the scaler's discovery publish it), and the scaler adds
// a pod's at its next read of the fleet, every --metrics-interval, whether
// or not KEDA polls. They are checked on the scaler's scrape once that read
// saw the pod, which must come within a few intervals.
var perRegistryPod = map[string]bool{"wsgate_scaler_pod_connections": true}

// TestNamesExistFromFirstScrape: every metric a dashboard or rule reads is
// exported by the real tracker and scaler before any admission was asked
// for, so "no data" always means something, never "not yet". Envoy's and
// kube-state-metrics' names are checked against the lists recorded from
// their sources in testdata. The askedByKEDA names must be exported once
// the scaler was asked as KEDA asks, and be read by no rule; the
// perRegistryPod names once the scaler read the fleet's pod.
func TestNamesExistFromFirstScrape(t *testing.T) {
	tool(t, "redis-server", "redis-server")
	used := usedNames(t)
	const pod = "127.0.0.1:9"
	s := startStack(t, pod)
	var first []labels.Labels
	for _, url := range []string{"http://" + s.trackerTelem + "/metrics", "http://" + s.scalerTelem + "/metrics"} {
		first = append(first, scrapeSeries(t, url)...)
	}
	exported := seriesNames(first)
	podSeries := awaitPodSeries(t, "http://"+s.scalerTelem+"/metrics", pod, 10*scalerMetricsInterval)
	podNames := seriesNames(podSeries)
	askScaler(t, s.scalerGRPC)
	afterKEDASeries := scrapeSeries(t, "http://"+s.scalerTelem+"/metrics")
	afterKEDA := seriesNames(afterKEDASeries)
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
		case askedByKEDA[name]:
			ok, from = afterKEDA[name], "the scaler's scrape once it was asked as KEDA asks"
			for _, w := range where {
				if !strings.HasPrefix(w, "monitoring/dashboards/") || !strings.Contains(w, "KEDA") {
					t.Errorf("%s reads %s, which exists only once KEDA asked: only a dashboard panel saying KEDA in its title may (askedByKEDA)", w, name)
				}
			}
		case perRegistryPod[name]:
			ok, from = podNames[name], "the scaler's scrape once it read the fleet's pod"
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

	// Each selector, not only its name: the series it reads exist too.
	fromStart := func(n string) bool {
		return strings.HasPrefix(n, "wsgate_") && exported[n] && !askedByKEDA[n] && !perRegistryPod[n] && !isKubeOnly(n)
	}
	if none := unmatchedSelectors(t, first, fromStart); len(none) > 0 {
		t.Errorf("%d selectors of the dashboards or rules match no series of the first scrape (their names are there):\n  %s", len(none), strings.Join(none, "\n  "))
	}
	if none := unmatchedSelectors(t, podSeries, func(n string) bool { return perRegistryPod[n] && podNames[n] }); len(none) > 0 {
		t.Errorf("%d selectors match no series of the scaler once it read the fleet's pod:\n  %s", len(none), strings.Join(none, "\n  "))
	}
	if none := unmatchedSelectors(t, afterKEDASeries, func(n string) bool { return askedByKEDA[n] && afterKEDA[n] }); len(none) > 0 {
		t.Errorf("%d selectors match no series of the scaler once asked as KEDA asks:\n  %s", len(none), strings.Join(none, "\n  "))
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

// awaitPodSeries scrapes the scaler at url until it exports the
// connections of pod (the scaler read a registry holding it), failing
// after within.
func awaitPodSeries(t *testing.T, url, pod string, within time.Duration) []labels.Labels {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		series := scrapeSeries(t, url)
		for _, ls := range series {
			if ls.Get(labels.MetricName) == "wsgate_scaler_pod_connections" && ls.Get("pod") == pod {
				return series
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the scaler exported no wsgate_scaler_pod_connections{pod=%q} within %s of the tracker registering the pod (--metrics-interval %s)", pod, within, scalerMetricsInterval)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// seriesNames returns the metric names of series.
func seriesNames(series []labels.Labels) map[string]bool {
	names := map[string]bool{}
	for _, ls := range series {
		names[ls.Get(labels.MetricName)] = true
	}
	return names
}

// scrapeSeries returns the series url exports, as Prometheus stores them
// (less the target's labels): a histogram's as _bucket (by le), _sum and
// _count, a summary's by quantile and as _sum and _count.
func scrapeSeries(t *testing.T, url string) []labels.Labels {
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
	var out []labels.Labels
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			base := map[string]string{}
			for _, lp := range m.GetLabel() {
				base[lp.GetName()] = lp.GetValue()
			}
			add := func(name string, extra ...string) {
				ls := labels.NewBuilder(labels.FromMap(base)).Set(labels.MetricName, name)
				for i := 0; i+1 < len(extra); i += 2 {
					ls.Set(extra[i], extra[i+1])
				}
				out = append(out, ls.Labels())
			}
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				for _, b := range m.GetHistogram().GetBucket() {
					add(name+"_bucket", "le", strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64))
				}
				add(name+"_bucket", "le", "+Inf")
				add(name + "_sum")
				add(name + "_count")
			case dto.MetricType_SUMMARY:
				for _, q := range m.GetSummary().GetQuantile() {
					add(name, "quantile", strconv.FormatFloat(q.GetQuantile(), 'g', -1, 64))
				}
				add(name + "_sum")
				add(name + "_count")
			default:
				add(name)
			}
		}
	}
	return out
}

// unmatchedSelectors lists the selectors on metric names accept accepts, of
// every dashboard and rule expression, that select none of series: a
// series a panel or rule reads (a fleet's reason, a pod state) that is not
// there although its family is. The variables are those of parseValues
// (".*" for the dashboards' own, which also matches a label the target
// adds, as namespace).
func unmatchedSelectors(t *testing.T, series []labels.Labels, accept func(name string) bool) []string {
	t.Helper()
	var out []string
	for _, e := range allExprs(t) {
		p, _, err := e.parse(parseValues)
		if err != nil {
			t.Fatalf("%s: %v (TestExpressionsParse says more)", e.where, err)
		}
		parser.Inspect(p, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok || !accept(vs.Name) {
				return nil
			}
			for _, ls := range series {
				if selects(vs.LabelMatchers, ls) {
					return nil
				}
			}
			out = append(out, fmt.Sprintf("%s: %s", e.where, vs))
			return nil
		})
	}
	sort.Strings(out)
	return out
}

func selects(ms []*labels.Matcher, ls labels.Labels) bool {
	for _, m := range ms {
		if !m.Matches(ls.Get(m.Name)) {
			return false
		}
	}
	return true
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
