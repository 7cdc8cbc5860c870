// Package prometheus holds meshd's alerting rules (meshd-rules.yml) and
// their unit tests (meshd-rules.test.yml); its Go tests run promtool on
// them and on the queries of the Grafana dashboard (../grafana).
package prometheus

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// requireEnv, when set (as CI sets it), makes a missing promtool fail the
// tests instead of skipping them.
const requireEnv = "MESHTRUST_REQUIRE_PROMTOOL"

// promtool returns the promtool binary, skipping t when there is none
// unless requireEnv is set.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv(requireEnv) != "" {
			t.Fatalf("no promtool and %s is set: install it with scripts/install-test-deps.sh (Debian's prometheus package) (%v)", requireEnv, err)
		}
		t.Skipf("no promtool: install it with scripts/install-test-deps.sh (%v)", err)
	}
	return path
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), promtool(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestRulesCheck: promtool accepts the rules (syntax, PromQL, templates).
func TestRulesCheck(t *testing.T) {
	if out := run(t, "check", "rules", "meshd-rules.yml"); !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check rules said:\n%s", out)
	}
}

// TestRulesUnitTests: every alert's unit tests pass (each fires on the
// series meant to fire it and stays silent on the others), and every
// alert of the rules has a test that fires it and one that silences it.
func TestRulesUnitTests(t *testing.T) {
	if out := run(t, "test", "rules", "meshd-rules.test.yml"); !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules said:\n%s", out)
	}
	rules, err := os.ReadFile("meshd-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("meshd-rules.test.yml")
	if err != nil {
		t.Fatal(err)
	}
	alerts := alertNames(t, string(rules))
	if len(alerts) < 15 {
		t.Fatalf("found %d alerts in meshd-rules.yml", len(alerts))
	}
	fired, silenced := testedAlerts(t, tests)
	for _, a := range alerts {
		if !fired[a] {
			t.Errorf("no unit test fires %s", a)
		}
		if !silenced[a] {
			t.Errorf("no unit test expects %s silent", a)
		}
	}
}

// ruleFile is the shape of a Prometheus rule file.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// alertNames returns the rules' alerts, checking that each has a
// severity, a summary and a description, and each group a distinct name.
func alertNames(t *testing.T, rules string) []string {
	t.Helper()
	var f ruleFile
	if err := yaml.Unmarshal([]byte(rules), &f); err != nil {
		t.Fatal(err)
	}
	var out []string
	groups := map[string]bool{}
	for _, g := range f.Groups {
		if groups[g.Name] {
			t.Errorf("group %s twice", g.Name)
		}
		groups[g.Name] = true
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			out = append(out, r.Alert)
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 80 {
				t.Errorf("%s: want a summary and a description that tells the operator what to do", r.Alert)
			}
		}
	}
	return out
}

// testedAlerts returns the alerts some unit test expects firing, and those
// some test expects silent (no alert at an evaluation time).
func testedAlerts(t *testing.T, tests []byte) (fired, silenced map[string]bool) {
	t.Helper()
	var f struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(tests, &f); err != nil {
		t.Fatal(err)
	}
	fired, silenced = map[string]bool{}, map[string]bool{}
	for _, tc := range f.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			} else {
				silenced[a.Alertname] = true
			}
		}
	}
	return fired, silenced
}
