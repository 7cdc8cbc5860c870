package registry

import (
	"sort"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
)

// Capability is one tool as GET /agents shows it.
type Capability struct {
	Name         string              `json:"name"`
	FunctionName string              `json:"function_name"`
	Version      string              `json:"version"`
	Tags         []string            `json:"tags"`
	Description  string              `json:"description"`
	Available    bool                `json:"available"`
	LLMFilter    *meshapi.LLMFilter  `json:"llm_filter,omitempty"`
	LLMProvider  *meshapi.Dependency `json:"llm_provider,omitempty"`
}

// DependencyResolution is one dependency of one tool and its provider,
// as GET /agents shows it (MCP Mesh's DependencyResolutionInfo).
type DependencyResolution struct {
	FunctionName    string   `json:"function_name"`
	Capability      string   `json:"capability"`
	Status          string   `json:"status"`
	Tags            []string `json:"tags,omitempty"`
	Endpoint        string   `json:"endpoint,omitempty"`
	ProviderAgentID string   `json:"provider_agent_id,omitempty"`
	MCPTool         string   `json:"mcp_tool,omitempty"`
}

// LLMToolResolution is one capability of an @mesh.llm tool filter and the
// tool it resolved to (MCP Mesh's LLMToolResolutionInfo).
type LLMToolResolution struct {
	FunctionName       string   `json:"function_name"`
	FilterCapability   string   `json:"filter_capability,omitempty"`
	FilterMode         string   `json:"filter_mode"`
	FilterTags         []string `json:"filter_tags,omitempty"`
	Status             string   `json:"status"`
	Endpoint           string   `json:"endpoint,omitempty"`
	ProviderAgentID    string   `json:"provider_agent_id,omitempty"`
	ProviderCapability string   `json:"provider_capability,omitempty"`
	MCPTool            string   `json:"mcp_tool,omitempty"`
}

// LLMProviderResolution is the LLM provider of an @mesh.llm tool (MCP
// Mesh's LLMProviderResolutionInfo).
type LLMProviderResolution struct {
	FunctionName       string   `json:"function_name"`
	RequiredCapability string   `json:"required_capability"`
	RequiredTags       []string `json:"required_tags,omitempty"`
	Status             string   `json:"status"`
	Endpoint           string   `json:"endpoint,omitempty"`
	ProviderAgentID    string   `json:"provider_agent_id,omitempty"`
	MCPTool            string   `json:"mcp_tool,omitempty"`
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
	// Source is the trust backend that admitted the owner's certificate
	// ("localca", "filestore", "spire"…); not on MCP Mesh's wire.
	Source string `json:"-"`
	// Node is the node the owner's certificate names ("ct111" for
	// "opus@ct111"): an agent id is bound to the node that claimed it.
	Node string `json:"node,omitempty"`
	// Unauthenticated marks an agent registered by a caller without a
	// certificate (TLS off, or auto): anyone else without one may act
	// for it, and a certificate may take it over.
	Unauthenticated bool      `json:"unauthenticated,omitempty"`
	Status          string    `json:"status"`
	Reason          string    `json:"reason,omitempty"`
	CreatedAt       time.Time `json:"created_at"`
	LastSeen        time.Time `json:"last_seen"`
	// Capabilities is null for an agent without tools, as in MCP Mesh.
	Capabilities         []Capability `json:"capabilities"`
	TotalDependencies    int          `json:"total_dependencies"`
	DependenciesResolved int          `json:"dependencies_resolved"`
	// DependencyResolutions lists every dependency of every tool, in the
	// order declared, resolved or not; null for an agent without any.
	// The LLM lists are likewise null without @mesh.llm declarations.
	DependencyResolutions  []DependencyResolution  `json:"dependency_resolutions"`
	LLMToolResolutions     []LLMToolResolution     `json:"llm_tool_resolutions"`
	LLMProviderResolutions []LLMProviderResolution `json:"llm_provider_resolutions"`
	A2AProducer            bool                    `json:"a2a_producer"`
	A2AConsumer            bool                    `json:"a2a_consumer"`
	CertificateExpiration  *time.Time              `json:"certificate_expires_at,omitempty"`
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
func (r *Registry) List(f Filter) []View {
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
			Description: reg.Description, Endpoint: r.endpoint(reg), Namespace: namespace(reg), EntityID: rec.Entity,
			Owner: rec.Owner, Source: rec.Source, Node: node, Unauthenticated: rec.Owner == "", Status: rec.Status, Reason: rec.Reason, CreatedAt: rec.RegisteredAt,
			LastSeen: time.Unix(0, e.lastSeen.Load()).UTC(), A2AProducer: reg.A2AProducer, A2AConsumer: reg.A2AConsumer,
		}
		if v.Name == "" {
			v.Name = rec.ID
		}
		if v.AgentType == "" {
			v.AgentType = "mcp_agent"
		}
		if v.Runtime == "" {
			v.Runtime = "python" // MCP Mesh's default
		}
		if !notAfter.IsZero() {
			v.CertificateExpiration = &notAfter
		}
		for _, t := range reg.Tools {
			c := Capability{Name: t.Capability, FunctionName: t.FunctionName, Version: t.Version, Tags: t.Tags, Description: t.Description,
				Available: rec.Status == StatusHealthy, LLMFilter: t.LLMFilter, LLMProvider: t.LLMProvider}
			// MCP Mesh's defaults for what the agent left out.
			if c.Version == "" {
				c.Version = "1.0.0"
			}
			if c.Tags == nil {
				c.Tags = []string{}
			}
			v.Capabilities = append(v.Capabilities, c)
			v.TotalDependencies += len(t.Dependencies)
		}
		set := r.resolution(e)
		v.DependenciesResolved, v.DependencyResolutions = set.available, set.list
		v.LLMToolResolutions, v.LLMProviderResolutions = r.llmResolutions(reg, partyOf(&rec))
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

// Census calls fn once per (status, entity, trust source) with how many
// agents the registry holds in it: the agents by entity and source, for
// meshd_registered_agents. It locks each entry briefly, as Expiry does,
// and runs at scrape time only.
func (r *Registry) Census(fn func(status, entity, source string, n int)) {
	type key struct{ status, entity, source string }
	counts := map[key]int{}
	for _, e := range r.snapshot() {
		e.mu.Lock()
		k := key{e.rec.Status, e.rec.Entity, e.rec.Source}
		e.mu.Unlock()
		counts[k]++
	}
	for k, n := range counts {
		fn(k.status, k.entity, k.source, n)
	}
}

// dependencyResolutions lists reg's dependencies in the order declared
// with their providers from resolved.
func dependencyResolutions(reg meshapi.Registration, resolved map[string][]meshapi.Resolution) []DependencyResolution {
	n := 0
	for _, t := range reg.Tools {
		n += len(t.Dependencies)
	}
	if n == 0 {
		return nil
	}
	out := make([]DependencyResolution, 0, n)
	for _, t := range reg.Tools {
		res := resolved[t.FunctionName]
		for i, d := range t.Dependencies {
			dr := DependencyResolution{FunctionName: t.FunctionName, Capability: d.Capability, Status: "unresolved", Tags: d.Tags}
			if i < len(res) && res[i].Status == "available" {
				dr.Status, dr.Endpoint, dr.ProviderAgentID, dr.MCPTool = res[i].Status, res[i].Endpoint, res[i].AgentID, res[i].FunctionName
			}
			out = append(out, dr)
		}
	}
	return out
}

// llmResolutions resolves reg's @mesh.llm declarations, those of an
// agent of consumer's, as dependencies are resolved: each filter
// capability to a tool, the provider to an agent.
func (r *Registry) llmResolutions(reg meshapi.Registration, consumer party) ([]LLMToolResolution, []LLMProviderResolution) {
	var (
		tools []LLMToolResolution
		provs []LLMProviderResolution
		c     *resolutionCache
	)
	for _, t := range reg.Tools {
		if t.LLMFilter == nil && t.LLMProvider == nil {
			continue
		}
		if c == nil {
			c = r.cacheAt(r.topology.Load())
		}
		if f := t.LLMFilter; f != nil {
			mode := f.Mode
			if mode == "" {
				mode = "all"
			}
			for _, item := range f.Filter {
				res := r.lookupDependency(item.Dependency, consumer, c)
				tr := LLMToolResolution{FunctionName: t.FunctionName, FilterCapability: item.Capability, FilterMode: mode, FilterTags: item.Tags, Status: "unresolved"}
				if res.Status == "available" {
					tr.Status, tr.Endpoint, tr.ProviderAgentID, tr.ProviderCapability, tr.MCPTool = res.Status, res.Endpoint, res.AgentID, res.Capability, res.FunctionName
				}
				tools = append(tools, tr)
			}
		}
		if p := t.LLMProvider; p != nil {
			res := r.lookupDependency(*p, consumer, c)
			pr := LLMProviderResolution{FunctionName: t.FunctionName, RequiredCapability: p.Capability, RequiredTags: p.Tags, Status: "unresolved"}
			if res.Status == "available" {
				pr.Status, pr.Endpoint, pr.ProviderAgentID, pr.MCPTool = res.Status, res.Endpoint, res.AgentID, res.FunctionName
			}
			provs = append(provs, pr)
		}
	}
	return tools, provs
}

func offersAny(reg meshapi.Registration, caps []string) bool {
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
