package config

import (
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"
)

func TestRegisterDefaultsFromEnvironment(t *testing.T) {
	t.Setenv(EnvDataDir, "/var/lib/meshd")
	t.Setenv(EnvRootDir, "")
	t.Setenv(EnvCADir, "/srv/ca")
	t.Setenv(EnvTrustDomain, "")
	t.Setenv("DATABASE_URL", "postgres://db/mesh")
	var m Mesh
	f := pflag.NewFlagSet("t", pflag.ContinueOnError)
	m.Register(f, Help{})
	if err := f.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if m.DataDir != "/var/lib/meshd" || m.CADir != "/srv/ca" || m.RootDir != "" || m.TrustDomain != DefaultTrustDomain || m.Database != "" {
		t.Errorf("defaults from the environment: %+v", m)
	}
	if got := m.DatabaseOrEnv(); got != "postgres://db/mesh" {
		t.Errorf("DatabaseOrEnv = %q, want DATABASE_URL", got)
	}
	if err := f.Parse([]string{"--database", "/x/meshtrust.db", "--trust-domain", "corp.example"}); err != nil {
		t.Fatal(err)
	}
	if m.DatabaseOrEnv() != "/x/meshtrust.db" || m.TrustDomain != "corp.example" {
		t.Errorf("flags over the environment: %+v", m)
	}
}

func TestDirs(t *testing.T) {
	for _, tc := range []struct {
		m              Mesh
		base           string
		wantRoot, want string
	}{
		{Mesh{DataDir: "/d"}, "/home/.meshtrust", "/d/root", "/d/ca"},
		{Mesh{}, "/home/.meshtrust", "/home/.meshtrust/root", "/home/.meshtrust/ca"},
		{Mesh{DataDir: "/d", RootDir: "/offline", CADir: "/ca"}, "", "/offline", "/ca"},
		{Mesh{DataDir: "/d", CADir: "/ca"}, "", "/d/root", "/ca"},
	} {
		root, ca := tc.m.Dirs(tc.base)
		if filepath.Clean(root) != tc.wantRoot || filepath.Clean(ca) != tc.want {
			t.Errorf("%+v.Dirs(%q) = %q, %q; want %q, %q", tc.m, tc.base, root, ca, tc.wantRoot, tc.want)
		}
	}
}
