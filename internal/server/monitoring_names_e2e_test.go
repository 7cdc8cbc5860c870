package server_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestE2EDashboardAndRulesNameRealMetrics: every metric a panel of the
// Grafana dashboard or an alerting rule names is one meshd exports, as
// read from /metrics of a meshd with the local CA that has seen some
// traffic (monitoredEnv), so a renamed or dropped metric fails here
// rather than leaving a panel empty or an alert silent.
func TestE2EDashboardAndRulesNameRealMetrics(t *testing.T) {
	e := monitoredEnv(t)
	r := e.adminDo("GET", "/metrics", nil)
	if r.code != 200 {
		t.Fatalf("GET /metrics: %s", r)
	}
	exported := exportedFamilies(string(r.body))
	// The families meshd exports only under a backend this test does not
	// run (spire, k8s-secrets): registered by internal/meshd/backends.go,
	// whose source must still name them.
	backends, err := os.ReadFile(filepath.Join("..", "meshd", "backends.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"meshd_trust_backend_stale", "meshd_trust_backend_stale_seconds", "meshd_trust_secret_rejections_total"} {
		if exported[f] {
			t.Errorf("%s is exported without its backend; drop it from this list", f)
		}
		if !strings.Contains(string(backends), `"`+f+`"`) {
			t.Errorf("internal/meshd/backends.go no longer registers %s", f)
		}
		exported[f] = true
	}
	root := filepath.Join("..", "..", "deploy")
	named := map[string][]string{} // metric -> where
	for where, expr := range dashboardExprs(t, filepath.Join(root, "grafana", "meshd.json")) {
		for _, m := range promqlMetrics(expr) {
			named[m] = append(named[m], where)
		}
	}
	for where, expr := range ruleExprs(t, filepath.Join(root, "prometheus", "meshd-rules.yml")) {
		for _, m := range promqlMetrics(expr) {
			named[m] = append(named[m], where)
		}
	}
	if len(named) < 25 {
		t.Fatalf("found %d metric names in the dashboard and the rules: %v", len(named), named)
	}
	for m, where := range named {
		if prometheusBuiltin[m] {
			continue
		}
		base := m
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(m, suffix); ok && exported[b] {
				base = b
			}
		}
		if !exported[base] {
			slices.Sort(where)
			t.Errorf("%s is not a metric meshd exports; named by %s", m, strings.Join(where, ", "))
		}
	}
}

// prometheusBuiltin are the series Prometheus makes itself.
var prometheusBuiltin = map[string]bool{"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true, "ALERTS": true, "ALERTS_FOR_STATE": true}

// exportedFamilies returns the metric families of a /metrics text page,
// from its # TYPE lines.
func exportedFamilies(page string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(page, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = true
		}
	}
	return out
}

// dashboardExprs returns the queries of the dashboard at path, by panel.
func dashboardExprs(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ RefID, Expr string }
		}
		Templating struct {
			List []struct {
				Name       string
				Definition string
			}
		}
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string]string{}
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			out["panel "+p.Title+" "+q.RefID] = q.Expr
		}
	}
	for _, v := range d.Templating.List {
		// Grafana's label_values(metric, label): the metric is PromQL.
		if def, ok := strings.CutPrefix(v.Definition, "label_values("); ok {
			metric, _, _ := strings.Cut(def, ",")
			out["variable "+v.Name] = metric
		}
	}
	return out
}

// ruleExprs returns the expressions of the rule file at path, by alert.
func ruleExprs(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct{ Alert, Record, Expr string }
		}
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out["alert "+r.Alert+r.Record] = r.Expr
		}
	}
	return out
}

// promqlKeywords are PromQL's words that are not metric names:
// aggregations (which may precede their by clause), operators and
// modifiers.
var promqlKeywords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true, "count": true,
	"count_values": true, "bottomk": true, "topk": true, "quantile": true, "limitk": true, "limit_ratio": true,
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
	"on": true, "ignoring": true, "group_left": true, "group_right": true, "atan2": true, "inf": true, "nan": true,
}

// promqlMetrics returns the metric names expr selects: its identifiers
// that are neither functions (followed by "("), keywords, label names
// (inside {} or a by/on clause's parentheses), durations ([5m]), numbers
// nor strings. Grafana's $variables are skipped.
func promqlMetrics(expr string) []string {
	var out []string
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9')
	}
	skipTo := func(i int, end byte) int {
		for i < len(expr) && expr[i] != end {
			if expr[i] == '"' || expr[i] == '\'' || expr[i] == '`' {
				q := expr[i]
				for i++; i < len(expr) && expr[i] != q; i++ {
					if expr[i] == '\\' {
						i++
					}
				}
			}
			i++
		}
		return i
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '{':
			i = skipTo(i, '}') + 1
		case c == '[':
			i = skipTo(i, ']') + 1
		case c == '"' || c == '\'' || c == '`':
			i = skipTo(i+1, c) + 1
		case c == '$':
			for i++; i < len(expr) && (expr[i] == '{' || expr[i] == '}' || isIdent(expr[i], false)); i++ {
			}
		case c >= '0' && c <= '9' || c == '.':
			for i++; i < len(expr) && (isIdent(expr[i], false) || expr[i] == '.'); i++ {
			}
		case isIdent(c, true):
			j := i
			for j < len(expr) && isIdent(expr[j], false) {
				j++
			}
			word := expr[i:j]
			k := j
			for k < len(expr) && expr[k] == ' ' {
				k++
			}
			switch {
			case word == "by" || word == "without" || word == "on" || word == "ignoring" || word == "group_left" || word == "group_right":
				if k < len(expr) && expr[k] == '(' {
					k = skipTo(k, ')') + 1 // a list of label names
				}
				j = k
			case k < len(expr) && expr[k] == '(' || promqlKeywords[strings.ToLower(word)]:
				// a function, an aggregation or an operator
			default:
				out = append(out, word)
			}
			i = j
		default:
			i++
		}
	}
	return out
}

// TestPromQLMetrics: the name extraction the test above relies on.
func TestPromQLMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`up{job=~".*(meshd|meshtrust).*"} == 0`:                                                               {"up"},
		`sum by (job, instance) (rate(meshd_enroll_refusals_total{reason="x"}[5m])) > 0.1`:                    {"meshd_enroll_refusals_total"},
		`histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"$instance"}[$__rate_interval]))) > 1`: {"a_bucket"},
		`(x - time()) < 30 * 86400 and x > 0`:                                                                 {"x", "x"},
		`meshd_crl_age_seconds > meshd_crl_validity_seconds / 2`:                                              {"meshd_crl_age_seconds", "meshd_crl_validity_seconds"},
		`a - on (instance) group_left (entity) b offset 5m`:                                                   {"a", "b"},
		`label_values(meshd_agents, instance)`:                                                                {"meshd_agents", "instance"},
		`bottomk(20, meshd_agent_certificate_expiry_timestamp_seconds{instance=~"$instance"} - time())`:       {"meshd_agent_certificate_expiry_timestamp_seconds"},
		`max(meshd_crl_age_seconds{i="a}b"} / meshd_crl_validity_seconds{instance=~"$instance"})`:             {"meshd_crl_age_seconds", "meshd_crl_validity_seconds"},
		`sum without (code) (rate(meshd_heartbeats_total[1m])) unless absent(meshd_agents)`:                   {"meshd_heartbeats_total", "meshd_agents"},
	} {
		if got := promqlMetrics(expr); !slices.Equal(got, want) {
			t.Errorf("promqlMetrics(%s) = %v, want %v", expr, got, want)
		}
	}
}
