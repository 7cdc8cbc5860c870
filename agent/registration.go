package agent

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/meshtrust/meshtrust/identity"
)

// Registration is what an agent tells the registry about itself: the body
// of MCP Mesh's POST /heartbeat. Fields left empty take the registry's
// defaults (the name is the agent id, the type mcp_agent, the namespace
// default). An agent that has its payload as JSON already (an MCP Mesh
// SDK's) gives Config.Payload instead.
type Registration struct {
	// AgentID is the agent's id; "" means Config.AgentID.
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

// Registered is the registry's answer to one registration (a POST
// /heartbeat it accepted), as Config.OnRegister receives it.
type Registered struct {
	// Message is the registry's ("Agent registered via heartbeat").
	Message string
	// Rotate reports that the registry asked for fresh credentials.
	Rotate bool
	// Dependencies maps each of the agent's tools (by function name) to
	// the providers of its dependencies, in the order declared.
	Dependencies map[string][]Resolution
	// Leaf is the certificate the agent registered with.
	Leaf *x509.Certificate
}

// maxPayload is the largest heartbeat body meshd reads.
const maxPayload = 1 << 20

// payload returns the body of POST /heartbeat for cfg and the agent id it
// registers: cfg.Payload with its agent_id checked (or filled in), else
// cfg.Registration as JSON. The body is built once, so every heartbeat of
// an agent sends the same bytes and meshd answers an unchanged one from
// memory.
func payload(cfg *Config) ([]byte, string, error) {
	id := cfg.AgentID
	// claim checks that a body's agent id agrees with Config.AgentID.
	claim := func(inBody string) error {
		switch {
		case inBody == "":
		case id == "":
			id = inBody
		case inBody != id:
			return fmt.Errorf("agent: the registration's agent_id %q is not Config.AgentID %q", inBody, id)
		}
		return nil
	}
	var body []byte
	if cfg.Payload != nil {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(cfg.Payload, &fields); err != nil || fields == nil {
			return nil, "", fmt.Errorf("agent: Config.Payload is not a JSON object (MCP Mesh's heartbeat payload): %v", err)
		}
		var inBody string
		if raw, ok := fields["agent_id"]; ok {
			if err := json.Unmarshal(raw, &inBody); err != nil {
				return nil, "", errors.New("agent: Config.Payload's agent_id is not a string")
			}
		}
		if err := claim(inBody); err != nil {
			return nil, "", err
		}
		fields["agent_id"], _ = json.Marshal(id)
		var err error
		if body, err = json.Marshal(fields); err != nil {
			return nil, "", fmt.Errorf("agent: Config.Payload: %w", err)
		}
	} else {
		reg := cfg.Registration
		if err := claim(reg.AgentID); err != nil {
			return nil, "", err
		}
		reg.AgentID = id
		var err error
		if body, err = json.Marshal(reg); err != nil {
			return nil, "", fmt.Errorf("agent: Config.Registration: %w", err)
		}
	}
	if err := identity.ValidateID(id); err != nil {
		return nil, "", fmt.Errorf("agent: agent id: %w", err)
	}
	if len(body) > maxPayload {
		return nil, "", fmt.Errorf("agent: the registration is %d bytes; meshd reads at most %d", len(body), maxPayload)
	}
	return body, id, nil
}
