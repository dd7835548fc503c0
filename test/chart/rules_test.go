package chart_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/wsgate/wsgate/test/wsgatebin"
)

// ruleCase is one configuration, given to the chart as helm --set/--set-json
// arguments and to the binaries as the flags (and fleets file) the chart
// would render from the same values.
type ruleCase struct {
	name string
	// set and setJSON are helm's --set and --set-json arguments.
	set, setJSON []string
	// chart is what helm template's error must hold (naming the values);
	// empty: the chart must render.
	chart string
	// bin are the binaries that must refuse the same settings with binErr
	// under --check-config ("tracker", "scaler", space-separated); the
	// others must accept them.
	bin, binErr string
	// chartOnly says why no binary can refuse it: the rule spans values
	// that no single binary sees. The binaries must accept the settings
	// they do see, so the chart is the only guard.
	chartOnly string
}

// valueFlags are the values the chart passes to a binary flag unchanged
// (templates/_dataplane.tpl, templates/scaler-deployment.yaml).
var valueFlags = map[string][]struct{ bin, flag string }{
	"tracker.heartbeat":        {{"tracker", "--heartbeat"}},
	"tracker.establishTimeout": {{"tracker", "--establish-timeout"}},
	"tracker.leaseTTL":         {{"tracker", "--lease-ttl"}},
	"tracker.redisTimeout":     {{"tracker", "--redis-timeout"}},
	"tracker.releaseLinger":    {{"tracker", "--release-linger"}},
	"tracker.shutdownTimeout":  {{"tracker", "--shutdown-timeout"}},
	"scaler.settle":            {{"scaler", "--settle"}},
	// Through WSGATE_REDIS_* (rendered for an external Redis only).
	"redis.addrs": {{"tracker", "--redis-addr"}, {"scaler", "--redis-addr"}},
	"redis.db":    {{"tracker", "--redis-db"}, {"scaler", "--redis-db"}},
	// Tracker flags, rendered whatever the Redis.
	"redis.waitReplicas":     {{"tracker", "--redis-wait-replicas"}},
	"redis.waitTimeout":      {{"tracker", "--redis-wait-timeout"}},
	"redis.replicationCheck": {{"tracker", "--redis-replication-check"}},
}

// valueFields are the values the chart writes into the fleets file as a
// top-level field, which tracker and scaler both read
// (templates/_helpers.tpl, wsgate.fleetSettings).
var valueFields = map[string]string{
	"tracker.instanceTTL":      "instanceTTL",
	"tracker.expiredInstances": "expiredInstances",
}

// ruleCases is the one table of configurations that cannot work: each is
// refused by the chart at template time and, where one binary sees every
// value of the rule, by that binary's own validation; and the edge cases
// that work, accepted by both.
var ruleCases = []ruleCase{
	// Rules the binaries enforce (tracker.Config.Validate, the flags).
	// The instance TTL is the fleets file's (line 1 of the rendered one).
	{name: "heartbeat not below instanceTTL", set: []string{"tracker.heartbeat=20s"},
		chart: "tracker.instanceTTL 10s: must be longer than tracker.heartbeat 20s", bin: "tracker", binErr: "fleets.yaml:1: instanceTTL 10s: must be longer than --heartbeat 20s"},
	{name: "instanceTTL equal to heartbeat", set: []string{"tracker.heartbeat=5s", "tracker.instanceTTL=5s"},
		chart: "tracker.instanceTTL 5s: must be longer than tracker.heartbeat 5s", bin: "tracker", binErr: "fleets.yaml:1: instanceTTL 5s: must be longer than --heartbeat 5s"},
	{name: "instanceTTL zero", set: []string{"tracker.instanceTTL=0s"},
		chart: "tracker.instanceTTL 0s: must be positive", bin: "tracker scaler", binErr: "fleets.yaml:1: instanceTTL 0s: must be positive (leave it out for the default 10s)"},
	{name: "instanceTTL just above heartbeat", set: []string{"tracker.heartbeat=2s", "tracker.instanceTTL=2001ms"}},
	{name: "releaseLinger not below heartbeat", set: []string{"tracker.releaseLinger=2s"},
		chart: "tracker.releaseLinger 2s: must be shorter than tracker.heartbeat 2s", bin: "tracker", binErr: "--release-linger 2s: must be shorter than --heartbeat 2s"},
	{name: "releaseLinger zero", set: []string{"tracker.releaseLinger=0s"},
		chart: "tracker.releaseLinger 0s: must be positive", bin: "tracker", binErr: "--release-linger 0: must be positive (leave it out for the default 50ms)"},
	{name: "releaseLinger just below heartbeat", set: []string{"tracker.heartbeat=2s", "tracker.releaseLinger=1999ms"}},
	{name: "instanceTTL in minutes", set: []string{"tracker.heartbeat=30s", "tracker.instanceTTL=1m"}},
	{name: "heartbeat zero", set: []string{"tracker.heartbeat=0s"},
		chart: "tracker.heartbeat 0s: must be positive", bin: "tracker", binErr: "--heartbeat 0: must be positive"},
	{name: "establishTimeout zero", set: []string{"tracker.establishTimeout=0ms"},
		chart: "tracker.establishTimeout 0ms: must be positive", bin: "tracker", binErr: "--establish-timeout 0: must be positive"},
	{name: "redisTimeout zero", set: []string{"tracker.redisTimeout=0s"},
		chart: "tracker.redisTimeout 0s: must be positive", bin: "tracker", binErr: "--redis-timeout 0: must be positive"},
	{name: "shutdownTimeout zero", set: []string{"tracker.shutdownTimeout=0s"},
		chart: "tracker.shutdownTimeout 0s: must be positive", bin: "tracker", binErr: "--shutdown-timeout 0: must be positive"},
	{name: "settle zero", set: []string{"scaler.settle=0s"},
		chart: "scaler.settle 0s: must be positive", bin: "scaler", binErr: "--settle 0s: must be positive"},
	{name: "fleet names twice", setJSON: []string{`fleets=[{"name":"chat"},{"name":"chat"}]`},
		chart: `fleets[1].name "chat": already the name of fleets[0]`, bin: "tracker scaler", binErr: "chat"},
	{name: "service and pods", setJSON: []string{`fleets=[{"name":"default","service":"backend","pods":["10.0.0.1:80"]}]`},
		chart: "fleets[0] (default): service and pods are both set", bin: "tracker scaler", binErr: "service is set too"},
	{name: "port without service", setJSON: []string{`fleets=[{"name":"default","pods":["10.0.0.1:80"],"port":"http"}]`},
		chart: "fleets[0] (default): port http is only meaningful with service", bin: "tracker scaler", binErr: "only meaningful with service"},
	{name: "pod listed twice", setJSON: []string{`fleets=[{"name":"default","pods":["10.0.0.1:80","10.0.0.1:80"]}]`},
		chart: `fleets[0] (default): pods lists "10.0.0.1:80" twice`, bin: "tracker scaler", binErr: `"10.0.0.1:80" listed twice`},
	{name: "retryAfter zero", setJSON: []string{`fleets=[{"name":"default","service":"backend","retryAfter":"0s"}]`},
		chart: "fleets[0] (default): retryAfter 0s must be positive", bin: "tracker scaler", binErr: "retryAfter"},
	// What `helm upgrade --set fleets[0].key=v` makes of the list.
	{name: "set replaces the fleets list", set: []string{"fleets[0].maxConnectionsPerPod=3"},
		chart: "fleets[0].name: missing. `--set fleets[0].<key>=...` replaces the whole fleets list", bin: "tracker scaler", binErr: "name"},

	// Rules across components.
	{name: "lease shorter than the flush interval", set: []string{"tracker.leaseTTL=20s"},
		chart:     "tracker.leaseTTL 20s: must be at least twice Envoy's access_log_flush_interval 30s",
		chartOnly: "the flush interval is in Envoy's configuration, the lease in the tracker's flags"},
	{name: "lease under two flush intervals", set: []string{"tracker.leaseTTL=59.5s"},
		chart:     "tracker.leaseTTL 59.5s: must be at least twice",
		chartOnly: "the flush interval is in Envoy's configuration, the lease in the tracker's flags"},
	{name: "lease of two flush intervals", set: []string{"tracker.leaseTTL=1m"}},
	{name: "redisTimeout above the filter's default", set: []string{"tracker.redisTimeout=300ms"},
		chart:     "tracker.redisTimeout 300ms: must stay 150 ms below the filter's admission timeout, the filter's default admitTimeoutMs (unset: the filter's default 250) = 250 ms",
		chartOnly: "the admission timeout is the Lua filter's, in Envoy's configuration"},
	{name: "redisTimeout eats the slack", set: []string{"tracker.redisTimeout=101ms"},
		chart:     "Lower tracker.redisTimeout to at most 100 ms",
		chartOnly: "the admission timeout is the Lua filter's, in Envoy's configuration"},
	{name: "route's admission timeout too short", setJSON: []string{`dataPlane.standalone.routes=[{"fleet":"default"},{"fleet":"default","hosts":["a.example"],"admitTimeoutMs":200}]`},
		chart:     "dataPlane.standalone.routes[1].admitTimeoutMs = 200 ms",
		chartOnly: "the admission timeout is the Lua filter's, in Envoy's configuration"},
	{name: "route's admission timeout raised", set: []string{"tracker.redisTimeout=350ms"}, setJSON: []string{`dataPlane.standalone.routes=[{"fleet":"default","admitTimeoutMs":500}]`}},
	{name: "istio admission timeout too short", set: []string{"dataPlane.mode=istio", "dataPlane.istio.envoyService=ingress", "dataPlane.istio.admitTimeoutMs=200"},
		chart:     "dataPlane.istio.admitTimeoutMs = 200 ms",
		chartOnly: "the admission timeout is the Lua filter's, in Envoy's configuration"},
	{name: "envoy gateway admission timeout too short", set: []string{"dataPlane.mode=envoyGateway", "dataPlane.envoyGateway.gateway=gw", "dataPlane.envoyGateway.envoyService=gw-envoy", "dataPlane.envoyGateway.listeners[0]=http"},
		setJSON:   []string{`dataPlane.envoyGateway.routes=[{"fleet":"default","httpRoutes":["ws"],"admitTimeoutMs":240}]`},
		chart:     "dataPlane.envoyGateway.routes[0].admitTimeoutMs = 240 ms",
		chartOnly: "the admission timeout is the Lua filter's, in Envoy's configuration"},
	{name: "shutdownTimeout not below the grace period", set: []string{"tracker.shutdownTimeout=1m"},
		chart:     "tracker.shutdownTimeout 1m: must be below envoy.terminationGracePeriodSeconds 60",
		chartOnly: "the grace period is the pod's, which the tracker does not see"},
	{name: "standalone Redis with two addresses", set: []string{"redis.bundled.enabled=false", "redis.addrs={a.example:6379,b.example:6379}"},
		chart:     "redis.addrs [a.example:6379 b.example:6379]: redis.mode standalone takes one address",
		chartOnly: "the binary takes several addresses for a Cluster's seeds, as the user may have meant"},
	{name: "standalone Redis with two addresses and a db", set: []string{"redis.bundled.enabled=false", "redis.addrs={a.example:6379,b.example:6379}", "redis.db=1"},
		chart: "redis.mode standalone takes one address", bin: "tracker scaler", binErr: "db 1: Redis Cluster has only db 0"},
	{name: "external Redis", set: []string{"redis.bundled.enabled=false", "redis.addrs={a.example:6379}", "redis.db=3"}},
	{name: "WAIT on the bundled Redis", set: []string{"redis.waitReplicas=1"},
		chart:     "redis.waitReplicas 1: the bundled Redis is a single node with no replica",
		chartOnly: "the bundled Redis is a chart resource; the tracker cannot tell it has no replica before it runs"},
	{name: "Sentinel waits for its replica", set: []string{"redis.bundled.enabled=false", "redis.mode=sentinel", "redis.masterName=main", "redis.addrs={s0.example:26379,s1.example:26379}"}},
	{name: "waitTimeout not below redisTimeout", set: []string{"redis.bundled.enabled=false", "redis.mode=sentinel", "redis.masterName=main", "redis.addrs={s0.example:26379,s1.example:26379}", "redis.waitReplicas=1", "redis.waitTimeout=100ms"},
		chart: "redis.waitTimeout 100ms: must be shorter than tracker.redisTimeout 100ms", bin: "tracker", binErr: "--redis-wait-timeout 100ms: must be shorter than --redis-timeout 100ms"},
	{name: "waitTimeout below a millisecond", set: []string{"redis.bundled.enabled=false", "redis.addrs={a.example:6379}", "redis.waitReplicas=2", "redis.waitTimeout=500us"},
		chart: "redis.waitTimeout 500us: must be at least 1ms", bin: "tracker", binErr: "must be at least 1ms"},
	{name: "waitTimeout zero", set: []string{"redis.waitTimeout=0s"},
		chart: "redis.waitTimeout 0s: must be positive", bin: "tracker", binErr: "must be positive (leave it out for the default 50ms)"},
	{name: "two scalers", set: []string{"scaler.replicas=2"},
		chart:     "scaler.replicas 2: run one scaler",
		chartOnly: "replicas is the Deployment's: no scaler process sees the others"},
	{name: "redis addrs with the bundled Redis", set: []string{"redis.addrs[0]=redis.example:6379"},
		chart:     "redis.addrs [redis.example:6379]: set redis.bundled.enabled=false",
		chartOnly: "the bundled Redis is a chart resource, not a binary setting"},
}

// TestRulesChartAndBinary runs ruleCases through helm template and through
// `wsgate tracker|scaler --check-config` with the command lines the chart
// renders, so the chart's rules and the binaries' validation cannot drift
// apart: a rule the binary gains or loses fails a case here.
func TestRulesChartAndBinary(t *testing.T) {
	bin := wsgateBinary(t)
	base := decodeStrict(t, template(t, ""))
	fleetsCM := get[*corev1.ConfigMap](t, base, "ConfigMap", "wsg-wsgate-fleets")
	cmdLines := map[string]*corev1.Container{
		"tracker": container(t, &get[*appsv1.Deployment](t, base, "Deployment", envoyName).Spec.Template.Spec, "tracker"),
		"scaler":  container(t, &get[*appsv1.Deployment](t, base, "Deployment", scalerName).Spec.Template.Spec, "scaler"),
	}
	t.Run("defaults", func(t *testing.T) {
		for b, c := range cmdLines {
			if out, err := checkConfig(t, bin, c, fleetsCM.Data["fleets.yaml"], nil); err != nil {
				t.Errorf("wsgate %s --check-config refuses the chart's defaults: %v\n%s", b, err, out)
			}
		}
	})
	for _, tc := range ruleCases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			helmArgs := []string{"template", "wsg", chartDir, "--namespace", namespace, "--kube-version", kubeVersion}
			for _, s := range tc.set {
				helmArgs = append(helmArgs, "--set", s)
			}
			for _, s := range tc.setJSON {
				helmArgs = append(helmArgs, "--set-json", s)
			}
			_, errOut, err := runHelm(t, helmArgs...)
			switch {
			case tc.chart == "" && err != nil:
				t.Errorf("helm template refuses %v %v: %v\n%s", tc.set, tc.setJSON, err, errOut)
			case tc.chart != "" && err == nil:
				t.Errorf("helm template renders %v %v, want an error with %q", tc.set, tc.setJSON, tc.chart)
			case tc.chart != "" && !strings.Contains(string(errOut), tc.chart):
				t.Errorf("helm's error lacks %q:\n%s", tc.chart, errOut)
			}

			overrides, fleets := binarySettings(t, tc, fleetsCM.Data["fleets.yaml"])
			for b, c := range cmdLines {
				if len(overrides[b]) == 0 && fleets == "" {
					continue
				}
				out, err := checkConfig(t, bin, c, fleets, overrides[b])
				refuse := slices.Contains(strings.Fields(tc.bin), b)
				if tc.chart != "" && tc.chartOnly == "" && tc.bin == "" {
					t.Fatal("case refused by the chart names neither bin nor chartOnly")
				}
				switch {
				case refuse && err == nil:
					t.Errorf("wsgate %s --check-config accepts what the chart refuses (%s)", b, tc.chart)
				case refuse && !strings.Contains(string(out), tc.binErr):
					t.Errorf("wsgate %s: error lacks %q:\n%s", b, tc.binErr, out)
				case !refuse && err != nil:
					t.Errorf("wsgate %s --check-config refuses %v %v (the table says only the chart can: %s): %v\n%s", b, tc.set, tc.setJSON, tc.chartOnly, err, out)
				}
			}
		})
	}
}

// binarySettings turns a case's values into flag overrides per binary and,
// when it sets fleets, a fleets file (empty: the rendered one).
func binarySettings(t *testing.T, tc ruleCase, renderedFleets string) (map[string]map[string]string, string) {
	t.Helper()
	overrides := map[string]map[string]string{}
	fleets := ""
	fields := map[string]string{}
	for _, s := range tc.set {
		k, v, _ := strings.Cut(s, "=")
		if strings.HasPrefix(k, "fleets[") {
			// --set on a list element replaces the list with one entry
			// holding that key only: the fleets file the chart would write.
			key := k[strings.Index(k, "].")+2:]
			fleets = "fleets:\n- " + key + ": " + v + "\n"
			continue
		}
		if field, ok := valueFields[k]; ok {
			fields[field] = v
			continue
		}
		v = strings.TrimSuffix(strings.TrimPrefix(v, "{"), "}") // a --set list
		for _, f := range valueFlags[k] {
			if overrides[f.bin] == nil {
				overrides[f.bin] = map[string]string{}
			}
			overrides[f.bin][f.flag] = v
		}
	}
	for _, s := range tc.setJSON {
		if k, v, _ := strings.Cut(s, "="); k == "fleets" {
			fleets = `{"fleets": ` + v + "}\n" // JSON is YAML
		}
	}
	if fleets == "" && (len(overrides) > 0 || len(fields) > 0) {
		fleets = renderedFleets
	}
	for field, v := range fields {
		// The rendered file has every setting, on a line of its own.
		line := regexp.MustCompile(`(?m)^` + field + `: .*$`)
		if !line.MatchString(fleets) {
			t.Fatalf("the fleets file has no %s line, so the case cannot set it:\n%s", field, fleets)
		}
		fleets = line.ReplaceAllString(fleets, field+": "+strconv.Quote(v))
	}
	return overrides, fleets
}

// wsgateBinary builds cmd/wsgate once per test binary.
func wsgateBinary(t *testing.T) string {
	t.Helper()
	return wsgatebin.Path(t)
}

// checkConfig runs a rendered container's command line with --check-config:
// the fleets file written to a temporary file, the flags in overrides
// replacing the rendered ones (which must be there), Kubernetes' $(VAR)
// references expanded from fixed pod fields, and the container's literal
// environment (WSGATE_REDIS_*: flags too) set, its WSGATE_* names replaced
// by overrides of the same flag.
func checkConfig(t *testing.T, bin string, c *corev1.Container, fleets string, overrides map[string]string) ([]byte, error) {
	t.Helper()
	rendered := c.Args
	file := filepath.Join(t.TempDir(), "fleets.yaml")
	if err := os.WriteFile(file, []byte(fleets), 0o644); err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{"POD_NAME": "wsg-wsgate-envoy-7d9f-abcde", "POD_NAMESPACE": namespace}
	seen := map[string]bool{}
	args := make([]string, 0, len(rendered)+1)
	for _, a := range rendered {
		name, _, _ := strings.Cut(a, "=")
		if v, ok := overrides[name]; ok {
			a = name + "=" + v
			seen[name] = true
		}
		if name == "--config" {
			a = "--config=" + file
		}
		for k, v := range fields {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		args = append(args, a)
	}
	env := []string{"HOME=" + os.TempDir()} // no WSGATE_* of this machine
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			continue
		}
		flag := "--" + strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(e.Name, "WSGATE_")), "_", "-")
		if v, ok := overrides[flag]; ok {
			env = append(env, e.Name+"="+v)
			seen[flag] = true
			continue
		}
		env = append(env, e.Name+"="+e.Value)
	}
	for name, v := range overrides {
		if !seen[name] && strings.HasPrefix(name, "--redis-") {
			// The chart renders the Redis flags of an external Redis only.
			env = append(env, "WSGATE_"+strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(name, "--"), "-", "_"))+"="+v)
			continue
		}
		if !seen[name] {
			t.Fatalf("the chart renders no %s= in %v: valueFlags is out of date", name, rendered)
		}
	}
	cmd := exec.Command(bin, append(args, "--check-config")...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err == nil && !strings.Contains(out.String(), "config ok") {
		t.Fatalf("wsgate %s --check-config exited 0 without saying config ok:\n%s", args[0], out.Bytes())
	}
	return out.Bytes(), err
}
