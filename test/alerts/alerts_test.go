package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/test/wsgatebin"
)

// The flags the test runs the binaries with: a recovery wait (one instance
// TTL) long enough for Prometheus, scraping and evaluating every second, to
// see it, and a scaler that settles at once.
const (
	heartbeat   = "500ms"
	instanceTTL = "6s"
	// forShort replaces every rule's `for`: the conditions are the real
	// ones, only the time they must last is short.
	forShort = "2s"
)

// TestAlertsAgainstRealPrometheus runs Debian's Prometheus with the rules
// (their `for` shortened) scraping a real tracker and scaler on a real
// redis-server: in fair weather nothing fires; with Redis killed (and
// clients trying to connect) WsgateRedisUnreachable fires; when Redis comes
// back empty, WsgateRecoveryWaitStuck (not the Redis alert) is pending or
// firing during the recovery wait; after it both are resolved.
func TestMain(m *testing.M) {
	code := m.Run()
	wsgatebin.Remove()
	os.Exit(code)
}

func TestAlertsAgainstRealPrometheus(t *testing.T) {
	promBin := tool(t, "prometheus")
	rs := redistest.Start(t)
	dir := t.TempDir()
	bin := wsgatebin.Path(t)

	fleets := filepath.Join(dir, "fleets.yaml")
	write(t, fleets, "instanceTTL: "+instanceTTL+"\nfleets:\n  - name: chat\n    maxConnectionsPerPod: 100\n    ratePerSecond: 1000\n    pods: [\"127.0.0.1:9\"]\n")
	admitAddr, trackerTel, scalerTel := loopback(t), loopback(t), loopback(t)
	start(t, dir, "tracker", bin, "tracker", "--config", fleets, "--redis-addr", rs.Addr(), "--instance-id", "envoy-0",
		"--listen", admitAddr, "--access-log-listen", loopback(t), "--telemetry-listen", trackerTel,
		"--heartbeat", heartbeat, "--redis-timeout", "200ms", "--log-level", "warn")
	start(t, dir, "scaler", bin, "scaler", "--config", fleets, "--redis-addr", rs.Addr(), "--listen", loopback(t),
		"--telemetry-listen", scalerTel, "--settle", "1s", "--metrics-interval", "500ms", "--log-level", "warn")

	rules := shortFor(t, filepath.Join(root(t), rulesFile))
	write(t, filepath.Join(dir, "rules.yaml"), rules)
	write(t, filepath.Join(dir, "prometheus.yml"), fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yaml]
scrape_configs:
  - job_name: wsgate-tracker
    static_configs: [{targets: [%q]}]
  - job_name: wsgate-scaler
    static_configs: [{targets: [%q]}]
`, trackerTel, scalerTel))
	promAddr := loopback(t)
	start(t, dir, "prometheus", promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+promAddr, "--log.level=warn")
	p := &prom{t: t, base: "http://" + promAddr}

	// Fair weather: the first epoch's recovery wait is over (a fresh Redis
	// is a new epoch: WsgateRecoveryWaitStuck may be pending meanwhile),
	// the scaler reports, the rules have seen it; then nothing is pending
	// or firing for three rule periods.
	p.await("the tracker grants, the scaler is ready, no alert active", time.Minute, func() bool {
		return p.value("wsgate_tracker_granting") == 1 && p.value("wsgate_scaler_ready") == 1 && len(p.alerts()) == 0
	})
	fair := time.Now()
	p.await("three rule evaluations in fair weather", time.Minute, func() bool {
		if a := p.alerts(); len(a) > 0 {
			t.Fatalf("in fair weather: %v active", a)
		}
		return p.evaluatedAfter(fair.Add(3 * mustDuration(t, forShort)))
	})

	// Redis killed: clients keep trying (the alert is about refused
	// admissions), the tracker refuses them with redis_down.
	rs.Kill()
	p.await("WsgateRedisUnreachable firing", time.Minute, func() bool {
		admit(t, admitAddr)
		return p.alerts()["WsgateRedisUnreachable"] == "firing"
	})

	// Redis back, empty: a new epoch, which grants nothing for one TTL.
	rs.Restart()
	sawRecovery := false
	p.await("the recovery wait seen and over", time.Minute, func() bool {
		admit(t, admitAddr)
		a := p.alerts()
		if st := a["WsgateRecoveryWaitStuck"]; st == "pending" || st == "firing" {
			sawRecovery = true
			if a["WsgateRedisUnreachable"] != "" {
				t.Fatalf("during the recovery wait: %v, want WsgateRedisUnreachable resolved", a)
			}
		}
		return sawRecovery && a["WsgateRecoveryWaitStuck"] == "" && p.value("wsgate_tracker_granting") == 1
	})
	p.await("both resolved after the recovery", 30*time.Second, func() bool {
		a := p.alerts()
		return a["WsgateRecoveryWaitStuck"] == "" && a["WsgateRedisUnreachable"] == ""
	})
	if n := p.value(`sum(wsgate_tracker_admissions_total{reason="recovering"})`); n <= 0 {
		t.Error("no admission refused with reason recovering during the recovery wait")
	}
}

// shortFor returns the rules file with every `for:` set to forShort.
func shortFor(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^(\s+for:) \S+$`)
	if n := len(re.FindAll(data, -1)); n != len(readRules(t)) {
		t.Fatalf("%s: %d `for:` lines for %d rules", path, n, len(readRules(t)))
	}
	return string(re.ReplaceAll(data, []byte("${1} "+forShort)))
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// loopback is a free 127.0.0.1 address.
func loopback(t *testing.T) string { return "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t)) }

// start runs a process for the test's duration; its output goes to
// dir/name.log, shown when the test fails.
func start(t *testing.T, dir, name, bin string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("%s's output:\n%s", name, tail(out, 3000))
		}
	})
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// admit asks the tracker's admission API for one connection; the answer
// does not matter, the tracker counts it.
func admit(t *testing.T, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/admit", strings.NewReader(`{"fleet":"chat"}`))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// prom talks to Prometheus' HTTP API.
type prom struct {
	t    *testing.T
	base string
}

// get decodes the data of a successful API answer into v; false while
// Prometheus is not answering yet.
func (p *prom) get(path string, q url.Values, v any) bool {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path+"?"+q.Encode(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var env struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.Status != "success" {
		if resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUnprocessableEntity {
			p.t.Fatalf("GET %s %v: %s", path, q, bytes.TrimSpace(body))
		}
		return false
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		p.t.Fatalf("GET %s: %v in %s", path, err, body)
	}
	return true
}

// value is the instant query's value, the sum of its samples; -1 when it
// returns nothing (or Prometheus does not answer yet).
func (p *prom) value(query string) float64 {
	p.t.Helper()
	var data struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if !p.get("/api/v1/query", url.Values{"query": {query}}, &data) || len(data.Result) == 0 {
		return -1
	}
	sum := 0.0
	for _, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			p.t.Fatalf("query %s: value %v", query, r.Value[1])
		}
		sum += v
	}
	return sum
}

// alerts maps each active alert's name to its state (pending, firing).
func (p *prom) alerts() map[string]string {
	p.t.Helper()
	var data struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	out := map[string]string{}
	if !p.get("/api/v1/alerts", nil, &data) {
		return out
	}
	for _, a := range data.Alerts {
		if out[a.Labels["alertname"]] != "firing" {
			out[a.Labels["alertname"]] = a.State
		}
	}
	return out
}

// evaluatedAfter says whether the rule group has been evaluated after t.
func (p *prom) evaluatedAfter(t time.Time) bool {
	p.t.Helper()
	var data struct {
		Groups []struct {
			LastEvaluation time.Time `json:"lastEvaluation"`
		} `json:"groups"`
	}
	if !p.get("/api/v1/rules", nil, &data) || len(data.Groups) == 0 {
		return false
	}
	return data.Groups[0].LastEvaluation.After(t)
}

// await polls cond (every 200 ms: Prometheus evaluates every second) until
// it holds, failing the test at the deadline.
func (p *prom) await(what string, limit time.Duration, cond func() bool) {
	p.t.Helper()
	began := time.Now()
	defer func() { p.t.Logf("%s: after %s", what, time.Since(began).Round(time.Millisecond)) }()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: not within %s (active alerts: %v)", what, limit, p.alerts())
		}
		<-tick.C
	}
}
