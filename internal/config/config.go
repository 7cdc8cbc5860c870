// Package config is the configuration meshd and meshctl both read: where
// the mesh's state lives (the data, root and CA directories and the store)
// and its trust domain. One struct, one set of defaults and environment
// variables, one rule for the directories a data directory implies, so
// that the two binaries cannot come to disagree about where a mesh is.
package config

import (
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/meshtrust/meshtrust/internal/store/database"
)

// The environment variables of the shared settings, and the trust
// domain's default.
const (
	EnvDataDir         = "MESHTRUST_DATA_DIR"
	EnvRootDir         = "MESHTRUST_ROOT_DIR"
	EnvCADir           = "MESHTRUST_CA_DIR"
	EnvTrustDomain     = "MCP_MESH_TRUST_DOMAIN"
	DefaultTrustDomain = "mesh.local"
)

// Mesh is where a mesh's state lives, and its trust domain.
type Mesh struct {
	// DataDir is meshd's data directory: its admin socket, and by
	// default the root and CA directories.
	DataDir string
	// RootDir and CADir are the root CA's directory (kept apart so it can
	// go offline) and the CA directory; "" means <DataDir>/root and
	// <DataDir>/ca (see Dirs).
	RootDir, CADir string
	// Database is the store: "" for the CA directory's SQLite file
	// (<CADir>/meshtrust.db), or a postgres:// URL that meshd replicas
	// share. The environment's DATABASE_URL is read by each binary with
	// its own checks (meshd honours MCP Mesh's meaning of it).
	Database string
	// TrustDomain is the SPIFFE trust domain of a CA created from here.
	TrustDomain string
}

// Help is one binary's wording of the shared flags' help; the meaning of
// each flag is the same in both.
type Help struct {
	DataDir, RootDir, CADir, Database, TrustDomain string
}

// Register adds --data-dir, --root-dir, --ca-dir, --database and
// --trust-domain to f, each defaulting to its environment variable (the
// trust domain to DefaultTrustDomain).
func (m *Mesh) Register(f *pflag.FlagSet, h Help) {
	f.StringVar(&m.DataDir, "data-dir", os.Getenv(EnvDataDir), h.DataDir)
	f.StringVar(&m.RootDir, "root-dir", os.Getenv(EnvRootDir), h.RootDir)
	f.StringVar(&m.CADir, "ca-dir", os.Getenv(EnvCADir), h.CADir)
	f.StringVar(&m.Database, "database", "", h.Database)
	td := os.Getenv(EnvTrustDomain)
	if td == "" {
		td = DefaultTrustDomain
	}
	f.StringVar(&m.TrustDomain, "trust-domain", td, h.TrustDomain)
}

// Dirs returns the root and CA directories: RootDir and CADir when set,
// else root and ca inside the data directory, which is DataDir or, when
// that is empty, base.
func (m Mesh) Dirs(base string) (rootDir, caDir string) {
	if m.DataDir != "" {
		base = m.DataDir
	}
	rootDir, caDir = m.RootDir, m.CADir
	if rootDir == "" {
		rootDir = filepath.Join(base, "root")
	}
	if caDir == "" {
		caDir = filepath.Join(base, "ca")
	}
	return rootDir, caDir
}

// DatabaseOrEnv returns Database, or DATABASE_URL when Database is empty.
func (m Mesh) DatabaseOrEnv() string {
	if m.Database != "" {
		return m.Database
	}
	return os.Getenv(database.EnvVar)
}
