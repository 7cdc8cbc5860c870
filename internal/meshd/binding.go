package meshd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// DefaultAgentTrustDomain is MCP Mesh's default MCP_MESH_TRUST_DOMAIN:
// its Vault-issued agent certificates are named <agent>.mcp-mesh.local.
const DefaultAgentTrustDomain = "mcp-mesh.local"

// trustDirCAFile is where MCP Mesh's --tls-auto keeps its development CA,
// the one its localca backend trusts.
const trustDirCAFile = "ca.pem"

// trustDirCAMax bounds the trust dir's ca.pem, a CA certificate or two.
const trustDirCAMax = 1 << 20

// bindings returns the identity binding of every trust source of the
// chain: the mesh CA's localca by exact CN; MCP Mesh's localca (the trust
// dir's ca.pem) by CN with its per-replica ids and <name>.<trust domain>;
// every other source (the trust dir, registered entities, k8s-secrets) by
// exact CN and MCP Mesh's <name>.<trust domain>; spire by those and by
// the SPIFFE IDs of spireTemplates; then the operator's overrides, which
// must name a source of the chain.
func (m *Meshd) bindings(backends []trust.Backend) (map[string]registry.Binding, error) {
	out := map[string]registry.Binding{}
	for _, b := range backends {
		name := b.Name()
		if b == trust.Backend(m.revoked) {
			continue // admits nothing: its chains are refused
		}
		switch {
		case name == BackendLocalCA && m.localCA != nil:
			out[name] = registry.Binding{CN: true}
			continue
		case name == BackendLocalCA:
			// MCP Mesh's --tls-auto CA names the agent (CN weather-agent)
			// and its agents register per-replica ids.
			out[name] = registry.Binding{CN: true, CNReplicas: true, TrustDomain: m.cfg.AgentTrustDomain}
			continue
		case name == BackendSPIRE && m.spire != nil:
			// SPIRE SVIDs carry no CN unless their entry sets -dns: their
			// SPIFFE ID names the agent.
			tmpl, err := spireTemplates(m.spire.TrustDomain(), m.cfg.SPIRE.Federated)
			if err != nil {
				return nil, err
			}
			out[name] = registry.Binding{CN: true, TrustDomain: m.cfg.AgentTrustDomain, SPIFFE: tmpl}
			continue
		}
		out[name] = registry.Binding{CN: true, TrustDomain: m.cfg.AgentTrustDomain}
	}
	for name, b := range m.cfg.AgentBindings {
		if _, ok := out[name]; !ok {
			return nil, fmt.Errorf("agent binding for trust source %q, which is not in the chain %v: list it in MCP_MESH_TRUST_BACKEND, or drop its binding", name, backendNames(backends))
		}
		out[name] = b
	}
	return out, nil
}

// spireTemplates are the spire source's default SPIFFE ID templates, for
// meshd's own trust domain and then each federated one:
// spiffe://<td>/agent/{agent}, one ID per agent, which speaks for that
// agent; and spiffe://<td>/mesh-agent, the one ID MCP Mesh's SPIRE
// deployments give every agent, whose holder may claim any id no one
// claimed (the first claim binds it to that SPIFFE ID). Which trust
// source vouches: each trust domain's own bundle, and no other (package
// spirebundle); compared: the SVID's one SPIFFE ID, as spiffeid parses
// it, segment by segment. A federated partner's agents stay inside its
// entity's namespace.
func spireTemplates(own spiffeid.TrustDomain, federated []spiffeid.TrustDomain) ([]registry.SPIFFETemplate, error) {
	tds := []spiffeid.TrustDomain{own}
	for _, td := range federated {
		if !slices.Contains(tds, td) {
			tds = append(tds, td)
		}
	}
	var out []registry.SPIFFETemplate
	for _, td := range tds {
		for _, path := range []string{"/agent/{agent}", "/mesh-agent"} {
			t, err := registry.ParseSPIFFETemplate("spiffe://" + td.Name() + path)
			if err != nil {
				return nil, fmt.Errorf("the spire backend's default binding for trust domain %s: %w", td, err)
			}
			out = append(out, t)
		}
	}
	return out, nil
}

// trustDirCA is the localca backend without a mesh CA: MCP Mesh's, whose
// CA is the development root that `meshctl start --tls-auto` writes to
// the trust dir's ca.pem. It is read once, at start; its certificates are
// the mesh's own (entity ""), as the trust dir's are, whatever O they
// carry.
func (m *Meshd) trustDirCA() (trust.Backend, error) {
	if m.cfg.TrustDir == "" {
		return nil, errors.New("trust backend localca needs the mesh CA: create it with `meshctl ca init` and `meshctl ca issue-intermediate` (or run meshd --dev); or, for MCP Mesh's --tls-auto CA, set MCP_MESH_TRUST_DIR to the directory holding its ca.pem")
	}
	path := filepath.Join(m.cfg.TrustDir, trustDirCAFile)
	data, err := pemfile.ReadRegular(path, trustDirCAMax)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("trust backend localca needs the mesh CA (`meshctl ca init`, or meshd --dev) or MCP Mesh's --tls-auto CA at %s, which does not exist", path)
	}
	if err != nil {
		return nil, fmt.Errorf("trust backend localca: %w", err)
	}
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("trust backend localca: %s: %w", path, err)
	}
	for _, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("trust backend localca: %s holds %q, which is not a CA certificate", path, c.Subject.String())
		}
	}
	if _, err := os.Stat(filepath.Join(m.cfg.TrustDir, "ca-key.pem")); err == nil {
		m.log.Warn("the trust dir holds ca-key.pem, the private key of the CA it trusts: whoever can read it can mint certificates for any agent. meshd never reads it; move it out of the trust dir", "dir", m.cfg.TrustDir)
	}
	a := trust.NewAnchors(BackendLocalCA)
	a.Set("", certs)
	m.log.Info("trust backend localca: no mesh CA, so it trusts the CA in the trust dir, as MCP Mesh's --tls-auto made it; a development CA, not for production", "file", path, "subject", certs[0].Subject.String())
	return a, nil
}
