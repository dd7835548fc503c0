package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// repoRoot is the wsgate repository this module sits in.
var repoRoot = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}()

// expr is one PromQL expression of a dashboard or a rules file.
type expr struct {
	where string // file and panel/target or group/rule, for messages
	panel string // the dashboard panel's title ("" for rules and variables)
	text  string // as written, template variables included
	vars  map[string]bool
}

// grafanaBuiltins are the variables Grafana defines itself.
var grafanaBuiltins = []string{"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}

// varRef matches a Grafana variable reference: $name, ${name}, ${name:format}
// or [[name]].
var varRef = regexp.MustCompile(`\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]`)

// substitute replaces every variable reference in s by values[name]; a
// reference to a variable not in values is an error.
func substitute(s string, values map[string]string) (string, error) {
	var unknown []string
	out := varRef.ReplaceAllStringFunc(s, func(m string) string {
		sub := varRef.FindStringSubmatch(m)
		name := sub[1] + sub[2] + sub[3]
		v, ok := values[name]
		if !ok {
			unknown = append(unknown, "$"+name)
			return m
		}
		return v
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("undefined template variable %s", strings.Join(unknown, ", "))
	}
	return out, nil
}

// dashboard is one Grafana dashboard file, as much of it as the tests read.
type dashboard struct {
	file          string
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int             `json:"id"`
	Title      string          `json:"title"`
	Type       string          `json:"type"`
	Datasource json.RawMessage `json:"datasource"`
	Targets    []struct {
		RefID      string          `json:"refId"`
		Expr       string          `json:"expr"`
		Datasource json.RawMessage `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

type variable struct {
	Name  string          `json:"name"`
	Type  string          `json:"type"`
	Query json.RawMessage `json:"query"`
}

// query is a query variable's PromQL query: Grafana stores it as a string
// or as {"query": "..."}.
func (v variable) query() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	_ = json.Unmarshal(v.Query, &o)
	return o.Query
}

// dashboardFiles lists the dashboards of dir.
func dashboardFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func loadDashboards(t *testing.T) []dashboard {
	t.Helper()
	files := dashboardFiles(t, filepath.Join(repoRoot, "monitoring", "dashboards"))
	if len(files) == 0 {
		t.Fatal("no dashboard in monitoring/dashboards")
	}
	var ds []dashboard
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d := dashboard{file: rel(f)}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", d.file, err)
		}
		ds = append(ds, d)
	}
	return ds
}

func rel(path string) string {
	if r, err := filepath.Rel(repoRoot, path); err == nil {
		return r
	}
	return path
}

// labelValues matches Grafana's label_values(selector, label) and
// query_result(expr), whose arguments are PromQL.
var (
	labelValues = regexp.MustCompile(`^\s*label_values\(\s*(.*),\s*\w+\s*\)\s*$`)
	queryResult = regexp.MustCompile(`^\s*query_result\((.*)\)\s*$`)
)

// exprs returns the PromQL of every panel's targets and of every query
// variable of d.
func (d dashboard) exprs() []expr {
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	for _, b := range grafanaBuiltins {
		vars[b] = true
	}
	var out []expr
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, expr{where: fmt.Sprintf("%s: panel %q target %s", d.file, p.Title, tg.RefID), panel: p.Title, text: tg.Expr, vars: vars})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q := v.query()
		for _, re := range []*regexp.Regexp{labelValues, queryResult} {
			if m := re.FindStringSubmatch(q); m != nil {
				out = append(out, expr{where: fmt.Sprintf("%s: variable %s", d.file, v.Name), text: m[1], vars: vars})
			}
		}
	}
	return out
}

// ruleFile is a Prometheus rules file (the format promtool checks).
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert  string `json:"alert"`
			Record string `json:"record"`
			Expr   string `json:"expr"`
		} `json:"rules"`
	} `json:"groups"`
}

// ruleExprs returns the expressions of monitoring/rules/*.yaml (none while
// the directory does not exist).
func ruleExprs(t *testing.T) []expr {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "monitoring", "rules", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []expr
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rf ruleFile
		if err := yaml.UnmarshalStrict(b, &rf); err != nil {
			// Fields this test does not model (labels, annotations, for) are
			// fine; only a file that is no YAML is an error.
			if err := yaml.Unmarshal(b, &rf); err != nil {
				t.Fatalf("%s: %v", rel(f), err)
			}
		}
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				out = append(out, expr{where: fmt.Sprintf("%s: group %s rule %s%s", rel(f), g.Name, r.Alert, r.Record), text: r.Expr})
			}
		}
	}
	return out
}

// allExprs is every expression of the dashboards and the rules.
func allExprs(t *testing.T) []expr {
	t.Helper()
	var out []expr
	for _, d := range loadDashboards(t) {
		out = append(out, d.exprs()...)
	}
	return append(out, ruleExprs(t)...)
}

// parseValues fill the variables for parsing: any value that makes the
// expression syntactically what Grafana would send.
var parseValues = map[string]string{
	"__rate_interval": "1m", "__interval": "1m", "__interval_ms": "60000",
	"__range": "1h", "__range_s": "3600", "__range_ms": "3600000",
}

// parse substitutes values (and, for a variable the dashboard declares but
// values lacks, a regex matching anything) and parses the result.
func (e expr) parse(values map[string]string) (parser.Expr, string, error) {
	vals := map[string]string{}
	for name := range e.vars {
		vals[name] = ".*"
	}
	for k, v := range values {
		vals[k] = v
	}
	text, err := substitute(e.text, vals)
	if err != nil {
		return nil, "", err
	}
	if strings.TrimSpace(text) == "" {
		return nil, "", fmt.Errorf("empty expression")
	}
	p, err := parser.NewParser(parser.Options{}).ParseExpr(text)
	return p, text, err
}

// metricNames lists the metric names an expression selects.
func metricNames(e parser.Expr) []string {
	seen := map[string]bool{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name != "" {
			seen[vs.Name] = true
		}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				seen[m.Value] = true
			}
		}
		return nil
	})
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func TestExpressionsParse(t *testing.T) {
	exprs := allExprs(t)
	if len(exprs) == 0 {
		t.Fatal("no expression found")
	}
	for _, e := range exprs {
		p, text, err := e.parse(parseValues)
		if err != nil {
			t.Errorf("%s: %v\n  %s", e.where, err, e.text)
			continue
		}
		if len(metricNames(p)) == 0 {
			t.Errorf("%s selects no metric by name: %s", e.where, text)
		}
	}
}

// TestDashboardConventions checks what makes a dashboard importable into
// any Grafana with a Prometheus: the data source is a variable, not the
// author's, and the selectors honour the namespace and fleet choice.
func TestDashboardConventions(t *testing.T) {
	uids := map[string]string{}
	for _, d := range loadDashboards(t) {
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: uid and title are required", d.file)
		}
		if prev, dup := uids[d.UID]; dup {
			t.Errorf("%s: uid %q is also %s's", d.file, d.UID, prev)
		}
		uids[d.UID] = d.file
		if d.SchemaVersion < 39 {
			t.Errorf("%s: schemaVersion %d; export it from a current Grafana (39 or later)", d.file, d.SchemaVersion)
		}
		var names []string
		for _, v := range d.Templating.List {
			names = append(names, v.Name)
			if v.Name == "datasource" && (v.Type != "datasource" || v.query() != "prometheus") {
				t.Errorf("%s: variable datasource must be of type datasource, query prometheus", d.file)
			}
		}
		for _, want := range []string{"datasource", "namespace", "fleet"} {
			if !slices.Contains(names, want) {
				t.Errorf("%s: no variable %s", d.file, want)
			}
		}
		var walk func(ps []panel)
		walk = func(ps []panel) {
			for _, p := range ps {
				if p.Type != "row" && !strings.Contains(string(p.Datasource), "${datasource}") {
					t.Errorf("%s: panel %q: datasource %s, want uid ${datasource}", d.file, p.Title, p.Datasource)
				}
				for _, tg := range p.Targets {
					if !strings.Contains(string(tg.Datasource), "${datasource}") {
						t.Errorf("%s: panel %q target %s: datasource %s, want uid ${datasource}", d.file, p.Title, tg.RefID, tg.Datasource)
					}
					if !strings.Contains(tg.Expr, `namespace=~"$namespace"`) && !strings.Contains(tg.Expr, "vector(") {
						t.Errorf("%s: panel %q target %s does not select namespace=~\"$namespace\": %s", d.file, p.Title, tg.RefID, tg.Expr)
					}
				}
				walk(p.Panels)
			}
		}
		walk(d.Panels)
	}
}

// TestSubstitute pins the substitution the other tests rely on.
func TestSubstitute(t *testing.T) {
	got, err := substitute(`rate(x{a=~"$fleet", b="${ns:regex}", c="[[pod]]"}[$__rate_interval])`,
		map[string]string{"fleet": "chat", "ns": "edge", "pod": "p", "__rate_interval": "1m"})
	if want := `rate(x{a=~"chat", b="edge", c="p"}[1m])`; err != nil || got != want {
		t.Errorf("substitute = %q, %v; want %q", got, err, want)
	}
	if _, err := substitute(`x{a="$nope"}`, map[string]string{}); err == nil || !strings.Contains(err.Error(), "$nope") {
		t.Errorf("an undefined variable: err = %v, want one naming $nope", err)
	}
}
