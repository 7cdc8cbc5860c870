package vault_test

import (
	"context"
	"log"
	"log/slog"
	"net/http"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/vault"
)

// An agent that takes its certificate from Vault, as MCP Mesh configures
// it (MCP_MESH_VAULT_ADDR, MCP_MESH_VAULT_PKI_PATH, VAULT_TOKEN, ...), and
// serves mTLS on it: the certificate rotates without a restart.
func ExampleFromEnv() {
	ctx := context.Background()
	src, err := vault.FromEnv(ctx, vault.Config{AgentName: "weather", Host: "10.0.0.7"},
		vault.WithLogger(slog.Default()))
	if err != nil {
		log.Fatal(err) // names the variable to set, or what Vault refused
	}
	defer src.Close()

	srv := &http.Server{
		Addr:      "10.0.0.7:8443",
		TLSConfig: credentials.ServerConfig(src, credentials.AuthorizeIdentity("registry.mcp-mesh.local")),
	}
	log.Fatal(srv.ListenAndServeTLS("", ""))
}
