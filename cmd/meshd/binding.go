package main

import (
	"github.com/spf13/pflag"

	"github.com/meshtrust/meshtrust/internal/meshd"
	"github.com/meshtrust/meshtrust/internal/registry"
)

// bindingOptions are how certificates name their agents: the trust
// domain of MCP Mesh's <name>.<td> form, the per-source binding
// overrides, and the trust-dir entities' namespaces.
type bindingOptions struct {
	trustDomain, agentBinding, entityNamespace string
}

func (b *bindingOptions) flags(f *pflag.FlagSet) {
	f.StringVar(&b.trustDomain, "agent-trust-domain", envOr("MCP_MESH_TRUST_DOMAIN", meshd.DefaultAgentTrustDomain), "trust domain of MCP Mesh's agent certificates, CN <agent>.<trust domain>, which trust-dir and entity CAs admit (env MCP_MESH_TRUST_DOMAIN)")
	f.StringVar(&b.agentBinding, "agent-binding", envOr("MESHD_AGENT_BINDING", ""), "per trust source, how its certificates name their agent: 'filestore=cn,trust-domain;spire=spiffe:spiffe://mcp-mesh.local/agent/{agent}' (forms cn, trust-domain[:<td>], spiffe:<template>, none; default localca=cn, spire cn,trust-domain and spiffe://<td>/agent/{agent}, spiffe://<td>/mesh-agent for its own and federated trust domains, others cn,trust-domain; env MESHD_AGENT_BINDING)")
	f.StringVar(&b.entityNamespace, "entity-namespace", envOr("MESHD_ENTITY_NAMESPACE", ""), "agent ids the trust dir's entities may claim: 'acme=first-claim;beta=ids:weather-agent-1,geo-agent-1' (default prefix: <entity>-…; registered entities choose theirs at `meshctl entity register --namespace`; env MESHD_ENTITY_NAMESPACE)")
}

// apply sets the binding fields of cfg.
func (b *bindingOptions) apply(cfg *meshd.Config) error {
	bindings, err := registry.ParseBindings(b.agentBinding, b.trustDomain)
	if err != nil {
		return err
	}
	namespaces, err := registry.ParseEntityNamespaces(b.entityNamespace)
	if err != nil {
		return err
	}
	cfg.AgentTrustDomain, cfg.AgentBindings, cfg.EntityNamespaces = b.trustDomain, bindings, namespaces
	return nil
}
