package meshtrust_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// The dashboard and the rules the chart installs are the repository's own
// files: files/ holds links to them, never copies that could drift.
var monitoringFiles = map[string]string{
	"files/meshd.json":      "../../../grafana/meshd.json",
	"files/meshd-rules.yml": "../../../prometheus/meshd-rules.yml",
}

// TestMonitoringFromOneSource: mesh.monitoring installs a ConfigMap the
// Grafana sidecar imports (grafana_dashboard: "1") holding exactly
// deploy/grafana/meshd.json, and a PrometheusRule holding exactly the
// groups of deploy/prometheus/meshd-rules.yml; by default neither.
func TestMonitoringFromOneSource(t *testing.T) {
	for link, target := range monitoringFiles {
		if got, err := os.Readlink(link); err != nil || got != target {
			t.Errorf("%s: a link to %s, want it to be one (not a copy): %q, %v", link, target, got, err)
		}
	}
	dashboard, err := os.ReadFile(filepath.Join("..", "..", "grafana", "meshd.json"))
	if err != nil {
		t.Fatal(err)
	}
	rulesFile, err := os.ReadFile(filepath.Join("..", "..", "prometheus", "meshd-rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []any `json:"groups"`
	}
	if err := yaml.Unmarshal(rulesFile, &rules); err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(rules.Groups)

	found := map[string]bool{}
	for _, o := range render(t, "mesh", filepath.Join("ci", "monitoring-values.yaml")) {
		switch o.GetKind() {
		case "ConfigMap":
			if o.GetName() != "t-meshtrust-dashboard" {
				continue
			}
			found["dashboard"] = true
			if o.GetLabels()["grafana_dashboard"] != "1" || o.GetAnnotations()["grafana_folder"] != "meshtrust" {
				t.Errorf("dashboard ConfigMap labels %v, annotations %v; want grafana_dashboard: \"1\" and the values' folder", o.GetLabels(), o.GetAnnotations())
			}
			data, _, _ := unstructured.NestedString(o.Object, "data", "meshd.json")
			if data != string(dashboard) {
				t.Errorf("the ConfigMap's meshd.json (%d bytes) is not deploy/grafana/meshd.json (%d bytes)", len(data), len(dashboard))
			}
		case "PrometheusRule":
			found["rules"] = true
			spec, _ := o.Object["spec"].(map[string]any)
			got, _ := json.Marshal(spec["groups"])
			if !bytes.Equal(got, want) {
				t.Errorf("the PrometheusRule's groups differ from deploy/prometheus/meshd-rules.yml's:\n got %.300s\nwant %.300s", got, want)
			}
			if o.GetLabels()["release"] != "prometheus" {
				t.Errorf("PrometheusRule labels %v; want the values' release: prometheus", o.GetLabels())
			}
		}
	}
	if !found["dashboard"] || !found["rules"] {
		t.Errorf("mesh.monitoring on rendered %v; want the dashboard ConfigMap and the PrometheusRule", found)
	}
	for _, o := range render(t, "mesh", "") {
		if o.GetKind() == "PrometheusRule" || o.GetName() == "t-meshtrust-dashboard" {
			t.Errorf("the defaults render %s %s; monitoring is off by default", o.GetKind(), o.GetName())
		}
	}
}

// TestPackagedChartHoldsMonitoringFiles: a chart packaged from the
// checkout carries the dashboard and the rules themselves, not links.
func TestPackagedChartHoldsMonitoringFiles(t *testing.T) {
	dir := t.TempDir()
	if out, err := helm(t, "package", ".", "--destination", dir); err != nil {
		t.Fatalf("helm package: %v\n%s", err, out)
	}
	pkgs, _ := filepath.Glob(filepath.Join(dir, "*.tgz"))
	if len(pkgs) != 1 {
		t.Fatalf("helm package wrote %v", pkgs)
	}
	f, err := os.Open(pkgs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	got := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			got[h.Name] = b
		}
	}
	for link, target := range monitoringFiles {
		want, err := os.ReadFile(filepath.Join(filepath.Dir(link), target))
		if err != nil {
			t.Fatal(err)
		}
		if b := got["meshtrust/"+link]; !bytes.Equal(b, want) {
			t.Errorf("the packaged chart's %s (%d bytes) is not %s (%d bytes)", link, len(b), target, len(want))
		}
	}
}
