// The compose file cannot be run here (no Docker); this test checks what
// can be checked without it: the file parses, every service, volume and
// file it names exists, the agent is in MCP Mesh's shape, and meshd's
// flags are flags meshd has (its README table, which a test keeps equal
// to meshd --help).
package compose_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

type composeFile struct {
	Services map[string]struct {
		Image string `json:"image"`
		Build *struct {
			Context    string `json:"context"`
			Dockerfile string `json:"dockerfile"`
		} `json:"build"`
		Command     []string          `json:"command"`
		Entrypoint  []string          `json:"entrypoint"`
		Environment map[string]string `json:"environment"`
		Volumes     []string          `json:"volumes"`
		DependsOn   any               `json:"depends_on"`
		ReadOnly    bool              `json:"read_only"`
	} `json:"services"`
	Volumes map[string]any `json:"volumes"`
}

func TestComposeFile(t *testing.T) {
	data, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	for _, name := range []string{"meshd", "vault", "my-agent"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("no service %s", name)
		}
	}
	for name, s := range c.Services {
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %s has neither image nor build", name)
		}
		if s.Build != nil {
			ctx := filepath.Join(".", s.Build.Context)
			if _, err := os.Stat(filepath.Join(ctx, s.Build.Dockerfile)); err != nil {
				t.Errorf("service %s builds from %s: %v", name, s.Build.Dockerfile, err)
			}
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(src); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("service %s mounts volume %s, which the file does not declare", name, src)
			}
		}
		var deps []string
		switch d := s.DependsOn.(type) {
		case []any:
			for _, x := range d {
				deps = append(deps, x.(string))
			}
		case map[string]any:
			for k := range d {
				deps = append(deps, k)
			}
		}
		for _, d := range deps {
			if _, ok := c.Services[d]; !ok {
				t.Errorf("service %s depends on %s, which does not exist", name, d)
			}
		}
	}
	// The agent in the seed's shape.
	agent := c.Services["my-agent"].Environment
	for _, k := range []string{"MCP_MESH_TLS_MODE", "MCP_MESH_TLS_PROVIDER", "MCP_MESH_VAULT_ADDR", "MCP_MESH_VAULT_PKI_PATH", "VAULT_TOKEN", "MCP_MESH_TLS_CA"} {
		if agent[k] == "" {
			t.Errorf("my-agent sets no %s", k)
		}
	}
	if agent["MCP_MESH_TLS_PROVIDER"] != "vault" || agent["MCP_MESH_VAULT_PKI_PATH"] != "pki_int/issue/mesh-agent" {
		t.Errorf("my-agent: provider %q, PKI path %q; want vault, pki_int/issue/mesh-agent", agent["MCP_MESH_TLS_PROVIDER"], agent["MCP_MESH_VAULT_PKI_PATH"])
	}
	// meshd's flags are meshd's.
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(readme), "\n## meshd flags\n")
	table, _, _ = strings.Cut(table, "\n## ")
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile("`--([a-z0-9-]+)`").FindAllStringSubmatch(table, -1) {
		flags[m[1]] = true
	}
	if !c.Services["meshd"].ReadOnly {
		t.Error("meshd does not run on a read-only root filesystem")
	}
	for _, arg := range c.Services["meshd"].Command {
		name, _, _ := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
		if !strings.HasPrefix(arg, "--") || !flags[name] {
			t.Errorf("meshd argument %q is not a meshd flag", arg)
		}
	}
}
