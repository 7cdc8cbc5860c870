package registry

import (
	"sort"
	"time"
)

// Capability is one tool as GET /agents shows it.
type Capability struct {
	Name         string   `json:"name"`
	FunctionName string   `json:"function_name"`
	Version      string   `json:"version"`
	Tags         []string `json:"tags"`
	Description  string   `json:"description"`
	Available    bool     `json:"available"`
}

// View is an agent as GET /agents shows it: MCP Mesh's AgentInfo, plus
// the owner, the node of its certificate and the eviction reason.
type View struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Version     string `json:"version"`
	AgentType   string `json:"agent_type"`
	Runtime     string `json:"runtime"`
	Description string `json:"description"`
	Endpoint    string `json:"endpoint"`
	Namespace   string `json:"namespace"`
	EntityID    string `json:"entity_id"`
	Owner       string `json:"owner,omitempty"`
	// Node is the node the owner's certificate names ("ct111" for
	// "opus@ct111"): an agent id is bound to the node that claimed it.
	Node string `json:"node,omitempty"`
	// Unauthenticated marks an agent registered by a caller without a
	// certificate (TLS off, or auto): anyone else without one may act
	// for it, and a certificate may take it over.
	Unauthenticated       bool         `json:"unauthenticated,omitempty"`
	Status                string       `json:"status"`
	Reason                string       `json:"reason,omitempty"`
	CreatedAt             time.Time    `json:"created_at"`
	LastSeen              time.Time    `json:"last_seen"`
	Capabilities          []Capability `json:"capabilities"`
	TotalDependencies     int          `json:"total_dependencies"`
	DependenciesResolved  int          `json:"dependencies_resolved"`
	CertificateExpiration *time.Time   `json:"certificate_expires_at,omitempty"`
}

// Filter selects agents in List; empty fields match everything, and an
// agent matches Capabilities if it offers any of them.
type Filter struct {
	Status, Entity, Namespace string
	Capabilities              []string
}

// List returns the agents matching f, by id. Dependency resolution comes
// from the agents' caches: a list computes it only for the agents whose
// topology moved since, and looks each distinct dependency up once.
func (r *Registry) List(f Filter, tls bool) []View {
	out := []View{}
	for _, e := range r.snapshot() {
		e.mu.Lock()
		rec, reg, node, notAfter := e.rec, e.reg, e.node, e.notAfter
		e.mu.Unlock()
		if (f.Status != "" && rec.Status != f.Status) || (f.Entity != "" && rec.Entity != f.Entity) ||
			(f.Namespace != "" && namespace(reg) != f.Namespace) || !offersAny(reg, f.Capabilities) {
			continue
		}
		v := View{
			ID: rec.ID, Name: reg.Name, Version: reg.Version, AgentType: reg.AgentType, Runtime: reg.Runtime,
			Description: reg.Description, Endpoint: endpoint(reg, tls), Namespace: namespace(reg), EntityID: rec.Entity,
			Owner: rec.Owner, Node: node, Unauthenticated: rec.Owner == "", Status: rec.Status, Reason: rec.Reason, CreatedAt: rec.RegisteredAt,
			LastSeen: time.Unix(0, e.lastSeen.Load()).UTC(), Capabilities: []Capability{},
		}
		if v.Name == "" {
			v.Name = rec.ID
		}
		if v.AgentType == "" {
			v.AgentType = "mcp_agent"
		}
		if !notAfter.IsZero() {
			v.CertificateExpiration = &notAfter
		}
		for _, t := range reg.Tools {
			v.Capabilities = append(v.Capabilities, Capability{Name: t.Capability, FunctionName: t.FunctionName, Version: t.Version, Tags: t.Tags, Description: t.Description, Available: rec.Status == StatusHealthy})
			v.TotalDependencies += len(t.Dependencies)
		}
		_, v.DependenciesResolved = r.resolution(e)
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Expiry calls fn with the certificate expiry of every registered agent,
// for the expiry metric.
func (r *Registry) Expiry(fn func(agentID, owner string, notAfter time.Time)) {
	for _, e := range r.snapshot() {
		e.mu.Lock()
		id, owner, na := e.rec.ID, e.rec.Owner, e.notAfter
		e.mu.Unlock()
		if !na.IsZero() {
			fn(id, owner, na)
		}
	}
}

func offersAny(reg Registration, caps []string) bool {
	if len(caps) == 0 {
		return true
	}
	for _, t := range reg.Tools {
		for _, c := range caps {
			if t.Capability == c {
				return true
			}
		}
	}
	return false
}
