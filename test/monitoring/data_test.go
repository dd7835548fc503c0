package monitoring

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/wsgate/wsgate/envoy/gateway"
	"github.com/wsgate/wsgate/test/wsbackend"
)

// namespace is the label the test's scrape configuration gives every
// target, as a Prometheus Operator ServiceMonitor does.
const namespace = "wsgate-test"

// dataValues fill the dashboards' variables as a user choosing this
// namespace and fleet would; the rate window suits a 1 s scrape interval.
var dataValues = map[string]string{
	"namespace": namespace, "fleet": fleet, "hpa": ".*",
	"envoy_hcm": "wsgate", "envoy_cluster": "wsgate_backend",
	"__rate_interval": "15s", "__interval": "15s", "__interval_ms": "15000",
	"__range": "5m", "__range_s": "300", "__range_ms": "300000",
}

// TestDashboardsShowData runs a real Prometheus scraping a real tracker and
// scaler, drives WebSockets through the Envoy stand-in (the real
// envoy/wsgate.lua) and asks the scaler for its metrics as KEDA does; then
// every dashboard query on wsgate's metrics must return data. Queries on
// Envoy's or kube-state-metrics' series, and on the scaler's --kube
// metrics, have no exporter here and are listed instead.
func TestDashboardsShowData(t *testing.T) {
	tool(t, "redis-server", "redis-server")
	promBin := tool(t, "prometheus", "prometheus")
	backend, err := wsbackend.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(backend.Close)
	s := startStack(t, backend.Addr)
	prom := startPrometheus(t, promBin, map[string]string{"tracker": s.trackerTelem, "scaler": s.scalerTelem})

	gw, err := gateway.New(gateway.Config{TrackerURL: "http://" + s.admitAddr, AccessLogAddr: s.accessLogAddr, Fleet: fleet, NodeID: "envoy-0", FlushInterval: 200 * time.Millisecond, AdmitTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gw.Serve(ln) }()
	t.Cleanup(func() { _ = gw.Close() })
	open := driveTraffic(t, "ws://"+ln.Addr().String()+"/")
	defer func() {
		for _, c := range open {
			_ = c.Close(websocket.StatusNormalClosure, "")
		}
	}()
	askScaler(t, s.scalerGRPC)

	type query struct {
		expr
		text string
	}
	var want []query
	var excepted []string
	for _, d := range loadDashboards(t) {
		for _, e := range d.exprs() {
			p, text, err := e.parse(dataValues)
			if err != nil {
				t.Fatalf("%s: %v", e.where, err)
			}
			if other := noExporterHere(metricNames(p)); other != "" {
				excepted = append(excepted, fmt.Sprintf("%s (%s)", e.where, other))
				continue
			}
			want = append(want, query{e, text})
		}
	}
	t.Logf("%d queries on wsgate's metrics; %d excepted, no exporter here:\n  %s", len(want), len(excepted), strings.Join(excepted, "\n  "))

	// Await data: each query until it returns some, all within one deadline.
	deadline := time.Now().Add(90 * time.Second)
	pending := want
	for len(pending) > 0 && time.Now().Before(deadline) {
		var still []query
		for _, q := range pending {
			if n, err := prom.resultCount(q.text); err != nil {
				t.Fatalf("%s: Prometheus refused %s: %v", q.where, q.text, err)
			} else if n == 0 {
				still = append(still, q)
			}
		}
		pending = still
		if len(pending) > 0 {
			time.Sleep(500 * time.Millisecond)
		}
	}
	if len(pending) > 0 {
		var lines []string
		for _, q := range pending {
			lines = append(lines, fmt.Sprintf("%s: %s", q.where, q.text))
		}
		t.Errorf("%d of %d dashboard queries returned no data within 90 s of the traffic:\n  %s", len(pending), len(want), strings.Join(lines, "\n  "))
	}
}

// noExporterHere names what the test cannot run for these metric names:
// Envoy, kube-state-metrics, or the scaler's --kube collectors.
func noExporterHere(names []string) string {
	for _, n := range names {
		switch {
		case strings.HasPrefix(n, "envoy_"):
			return "Envoy"
		case strings.HasPrefix(n, "kube_"):
			return "kube-state-metrics"
		case isKubeOnly(n):
			return "the scaler's --kube"
		}
	}
	return ""
}

// driveTraffic opens WebSockets through the gateway: refused until the
// fleet grants (its first recovery wait on an empty Redis), then up to the
// cap, one over it (a capacity rejection), one closed and opened again (a
// release through the access log). It returns the connections left open,
// so the live-connection panels have something to show.
func driveTraffic(t *testing.T, wsURL string) []*websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dial := func() (*websocket.Conn, string) {
		c, resp, err := websocket.Dial(ctx, wsURL, nil)
		if err == nil {
			return c, ""
		}
		if resp == nil {
			t.Fatalf("dial %s: %v", wsURL, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("X-Wsgate-Reason"))
	}
	var open []*websocket.Conn
	var refused []string
	for len(open) == 0 {
		c, why := dial()
		if c != nil {
			open = append(open, c)
			break
		}
		refused = append(refused, why)
		if ctx.Err() != nil {
			t.Fatalf("no admission within 60 s; refused: %v", refused)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("admitted after %d refusals (%v)", len(refused), firstN(refused, 3))
	for len(open) < capPerPod {
		c, why := dial()
		if c == nil {
			t.Fatalf("connection %d of a pod of cap %d refused: %s", len(open)+1, capPerPod, why)
		}
		open = append(open, c)
	}
	if c, why := dial(); c != nil || !strings.Contains(why, "capacity") {
		t.Fatalf("a connection over the cap: got %v %q, want 503 capacity", c != nil, why)
	}
	last := open[len(open)-1]
	_ = last.Close(websocket.StatusNormalClosure, "")
	open = open[:len(open)-1]
	for len(open) < capPerPod {
		c, why := dial()
		if c != nil {
			open = append(open, c)
			break
		}
		if !strings.Contains(why, "capacity") || ctx.Err() != nil {
			t.Fatalf("after a close, a new connection: %s", why)
		}
		time.Sleep(50 * time.Millisecond) // the release travels the access log
	}
	return open
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// askScaler asks the scaler for each of its metrics as KEDA's external
// scaler client does, until it answers (it holds them while Redis' epoch
// is younger than --settle).
func askScaler(t *testing.T, addr string) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := externalscaler.NewExternalScalerClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range []string{"desiredReplicas", "connections", "saturation", "rateLimitPressure"} {
		ref := &externalscaler.ScaledObjectRef{Name: "backend", Namespace: namespace, ScalerMetadata: map[string]string{"fleet": fleet, "metric": m}}
		for {
			_, err := client.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: ref})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("scaler GetMetrics %s: %v", m, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// promServer is a Prometheus server the test runs.
type promServer struct{ base string }

// startPrometheus runs Debian's prometheus on loopback with a 1 s scrape of
// targets (job -> host:port), each labelled with the namespace.
func startPrometheus(t *testing.T, bin string, targets map[string]string) *promServer {
	t.Helper()
	dir := t.TempDir()
	var cfg strings.Builder
	cfg.WriteString("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n")
	for job, addr := range targets {
		fmt.Fprintf(&cfg, "  - job_name: %s\n    static_configs:\n      - targets: [%q]\n        labels: {namespace: %s}\n", job, addr, namespace)
	}
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	p := start(t, "prometheus", bin, "--config.file", path, "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr, "--log.level", "warn")
	p.awaitOK(t, "http://"+addr+"/-/ready", 60*time.Second)
	return &promServer{base: "http://" + addr}
}

// resultCount runs an instant query and returns how many series (or, for
// a scalar, 1) it returned.
func (p *promServer) resultCount(q string) (int, error) {
	resp, err := http.Get(p.base + "/api/v1/query?" + url.Values{"query": {q}}.Encode())
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s", r.Error)
	}
	if r.Data.ResultType == "scalar" || r.Data.ResultType == "string" {
		return 1, nil
	}
	var series []json.RawMessage
	if err := json.Unmarshal(r.Data.Result, &series); err != nil {
		return 0, err
	}
	return len(series), nil
}
