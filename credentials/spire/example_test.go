package spire_test

import (
	"context"
	"log"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/spire"
)

// An mTLS server whose SVID and bundles follow the SPIRE agent at
// MCP_MESH_SPIRE_SOCKET: the agent's rotations apply to the next
// connection. It takes the mesh's agents and a federated partner's, each
// verified against its own trust domain's bundle.
func ExampleNew() {
	mesh := spiffeid.RequireTrustDomainFromString("mcp-mesh.local")
	partner := spiffeid.RequireTrustDomainFromString("partner.example")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel() // bounds the wait for the first SVID, not the source
	src, err := spire.New(ctx, spire.WithFederation(partner))
	if err != nil {
		log.Fatal(err) // names the socket and what the agent answered
	}
	defer src.Close()

	allow := credentials.AdaptMatcher(func(id spiffeid.ID) error {
		if err := spiffeid.MatchMemberOf(mesh)(id); err == nil {
			return nil
		}
		return spiffeid.MatchID(spiffeid.RequireFromPath(partner, "/billing"))(id)
	})
	srv := &http.Server{Addr: ":8443", TLSConfig: credentials.ServerConfig(src, allow)}
	log.Fatal(srv.ListenAndServeTLS("", ""))
}
