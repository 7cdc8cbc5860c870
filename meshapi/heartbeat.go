package meshapi

import "encoding/json"

// MCP Mesh's registry routes. Their bodies follow MCP Mesh's protocol, field
// names included, so MCP Mesh's agents and SDKs speak to meshd unchanged.
const (
	// PathHeartbeat is POST: Registration in, HeartbeatResponse out. HEAD
	// PathHeartbeat + "/" + agent_id is the cheap heartbeat of an agent
	// registered already (no body either way).
	PathHeartbeat = "/heartbeat"
)

// Registration is what an agent tells the registry about itself: the body
// of MCP Mesh's POST /heartbeat. Fields left empty take the registry's
// defaults (the name is the agent id, the type mcp_agent, the namespace
// default). Fields meshd does not use (input schemas, say) are kept in
// the payload it stores, as the agent sent them.
type Registration struct {
	// AgentID is the agent's id. Required on the wire.
	AgentID string `json:"agent_id"`
	// Name is the agent's display name, at most 63 characters; "" is
	// the agent id.
	Name string `json:"name,omitempty"`
	// Version is the agent's own version, stored as given.
	Version string `json:"version,omitempty"`
	// AgentType is mcp_agent (the default), api or a2a.
	AgentType string `json:"agent_type,omitempty"`
	// Runtime names the agent's language runtime (MCP Mesh's python,
	// typescript, java).
	Runtime string `json:"runtime,omitempty"`
	// Description says what the agent is for.
	Description string `json:"description,omitempty"`
	// HTTPHost and HTTPPort are where other agents reach this one; the
	// registry lists the endpoint https://HTTPHost:HTTPPort, or
	// stdio://<agent-id> without a port.
	HTTPHost string `json:"http_host,omitempty"`
	HTTPPort int    `json:"http_port,omitempty"`
	// Namespace groups agents; "" is the registry's default namespace.
	Namespace string `json:"namespace,omitempty"`
	// Tools are what the agent offers, and what each needs.
	Tools []Tool `json:"tools,omitempty"`
	// A2AProducer and A2AConsumer say the agent serves or calls A2A
	// surfaces; GET /agents shows them.
	A2AProducer bool `json:"a2a_producer,omitempty"`
	A2AConsumer bool `json:"a2a_consumer,omitempty"`
}

// Tool is one tool an agent offers, with the capabilities it depends on.
type Tool struct {
	// FunctionName names the tool; it keys the resolutions of its
	// dependencies. Required.
	FunctionName string `json:"function_name"`
	// Capability is what the tool provides to other agents' dependencies.
	Capability string `json:"capability"`
	// Version is the capability's version, which dependencies' semver
	// constraints match.
	Version string `json:"version,omitempty"`
	// Tags qualify the capability for dependencies that ask for them.
	Tags []string `json:"tags,omitempty"`
	// Description says what the tool does.
	Description string `json:"description,omitempty"`
	// InputSchema is the tool's JSON Schema, stored as given.
	InputSchema json.RawMessage `json:"inputSchema,omitempty"`
	// Dependencies are the capabilities the tool needs from others.
	Dependencies []Dependency `json:"dependencies,omitempty"`
	// LLMFilter and LLMProvider are MCP Mesh's @mesh.llm declarations:
	// the tools an LLM tool may call, and the LLM provider it delegates
	// to. They are resolved like dependencies.
	LLMFilter   *LLMFilter  `json:"llm_filter,omitempty"`
	LLMProvider *Dependency `json:"llm_provider,omitempty"`
}

// Dependency is a capability a tool needs from another agent.
type Dependency struct {
	// Capability is the capability needed.
	Capability string `json:"capability"`
	// Tags are tags the provider's tool must carry.
	Tags []string `json:"tags,omitempty"`
	// Version is a semver constraint (">=1.0.0").
	Version string `json:"version,omitempty"`
	// Namespace is where the provider must be; "" is the registry's
	// default.
	Namespace string `json:"namespace,omitempty"`
}

// LLMFilter is an @mesh.llm tool filter: capabilities, each given by
// name alone or as a dependency with tags, and a mode (all, best_match,
// or *).
type LLMFilter struct {
	Filter []FilterItem `json:"filter,omitempty"`
	Mode   string       `json:"filter_mode,omitempty"`
}

// FilterItem is one capability of an LLMFilter: MCP Mesh accepts a bare
// capability name or an object. It is written as an object.
type FilterItem struct{ Dependency }

// UnmarshalJSON reads a capability name or a dependency object.
func (f *FilterItem) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err == nil {
		f.Dependency = Dependency{Capability: name}
		return nil
	}
	return json.Unmarshal(b, &f.Dependency)
}

// Resolution is the registry's answer for one dependency: the agent that
// provides it (Status "available"), or none (Status "unresolved", the
// other fields empty).
type Resolution struct {
	// AgentID is the providing agent's id.
	AgentID string `json:"agent_id"`
	// Capability is the capability resolved.
	Capability string `json:"capability"`
	// Endpoint is where the provider is reached (https://host:port).
	Endpoint string `json:"endpoint"`
	// FunctionName is the provider's tool that offers the capability.
	FunctionName string `json:"function_name"`
	// Status is "available" or "unresolved".
	Status string `json:"status"`
}

// HeartbeatResponse is the registry's answer to a POST /heartbeat it
// accepted: MCP Mesh's, plus Rotate. meshd writes it by hand, byte for
// byte what encoding/json writes for this type (a test pins it).
type HeartbeatResponse struct {
	// AgentID is the registered agent's id.
	AgentID string `json:"agent_id"`
	// Status is "success"; MCP Mesh answers a refused payload with
	// status "error" and a 200.
	Status string `json:"status"`
	// Message says what the registry did ("Agent registered via
	// heartbeat", "Agent updated via heartbeat").
	Message string `json:"message"`
	// Rotate asks the agent to register again with fresh credentials.
	Rotate bool `json:"rotate"`
	// DependenciesResolved maps each of the agent's tools (by function
	// name) to the providers of its dependencies, in the order declared.
	DependenciesResolved map[string][]Resolution `json:"dependencies_resolved"`
	// LLMTools is MCP Mesh's resolution of @mesh.llm tool filters; meshd
	// resolves none and always answers an empty object.
	LLMTools struct{} `json:"llm_tools"`
	// Timestamp is when the registry answered, in RFC 3339 with
	// nanoseconds.
	Timestamp string `json:"timestamp"`
}
