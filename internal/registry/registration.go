package registry

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/meshapi"
)

// MaxBody is the largest heartbeat body meshd reads.
const MaxBody = 1 << 20

// ParseRegistration parses and validates a heartbeat body and returns it
// with the compacted JSON the registry stores.
func ParseRegistration(body []byte) (meshapi.Registration, []byte, error) {
	var reg meshapi.Registration
	if err := json.Unmarshal(body, &reg); err != nil {
		return reg, nil, refusal(ErrInvalid, "bad_json", "invalid JSON payload: %v", err)
	}
	if reg.AgentID == "" {
		return reg, nil, refusal(ErrInvalid, "bad_agent_id", "agent_id is required")
	}
	if err := identity.ValidateID(reg.AgentID); err != nil {
		return reg, nil, refusal(ErrInvalid, "bad_agent_id", "agent_id: %v", err)
	}
	if len(reg.Name) > 63 {
		return reg, nil, refusal(ErrInvalid, "bad_name", "name is %d characters long (at most 63)", len(reg.Name))
	}
	switch reg.AgentType {
	case "", "mcp_agent", "api", "a2a":
	default:
		return reg, nil, refusal(ErrInvalid, "bad_agent_type", "agent_type %q is not one of mcp_agent, api, a2a", reg.AgentType)
	}
	if reg.HTTPPort < 0 || reg.HTTPPort > 65535 {
		return reg, nil, refusal(ErrInvalid, "bad_port", "http_port %d is not a port", reg.HTTPPort)
	}
	for i, t := range reg.Tools {
		if t.FunctionName == "" {
			return reg, nil, refusal(ErrInvalid, "bad_tool", "tools[%d]: function_name is required", i)
		}
	}
	payload, err := canonical(body)
	if err != nil {
		return reg, nil, refusal(ErrInvalid, "bad_json", "invalid JSON payload: %v", err)
	}
	return reg, payload, nil
}

// bound refuses a registration that declares more than the registry's
// limits allow. It runs before anything else looks at the registration,
// so a refused one changes nothing. It is on every parsed heartbeat's
// path: it only counts, and leaves the messages to overLimit.
func (r *Registry) bound(reg *meshapi.Registration) error {
	c := &r.cfg
	if len(reg.Tools) > c.MaxTools {
		return r.overLimit(reg)
	}
	total := 0
	for i := range reg.Tools {
		t := &reg.Tools[i]
		total += len(t.Dependencies)
		if len(t.Dependencies) > c.MaxToolDependencies || len(t.Tags) > c.MaxTags {
			return r.overLimit(reg)
		}
		for j := range t.Dependencies {
			if len(t.Dependencies[j].Tags) > c.MaxTags {
				return r.overLimit(reg)
			}
		}
	}
	if total > c.MaxDependencies {
		return r.overLimit(reg)
	}
	return nil
}

// overLimit returns the refusal of a registration bound found over a
// limit, naming the first limit it is over.
func (r *Registry) overLimit(reg *meshapi.Registration) error {
	c := &r.cfg
	if n := len(reg.Tools); n > c.MaxTools {
		return refusal(ErrInvalid, "too_many_tools", "registration declares %d tools; meshd accepts at most %d tools per agent", n, c.MaxTools)
	}
	total := 0
	for i, t := range reg.Tools {
		if n := len(t.Dependencies); n > c.MaxToolDependencies {
			return refusal(ErrInvalid, "too_many_tool_dependencies", "tools[%d] (%q) declares %d dependencies; meshd accepts at most %d dependencies per tool", i, t.FunctionName, n, c.MaxToolDependencies)
		}
		total += len(t.Dependencies)
		if n := len(t.Tags); n > c.MaxTags {
			return refusal(ErrInvalid, "too_many_tags", "tools[%d] (%q) carries %d tags; meshd accepts at most %d tags per tool or dependency", i, t.FunctionName, n, c.MaxTags)
		}
		for j, d := range t.Dependencies {
			if n := len(d.Tags); n > c.MaxTags {
				return refusal(ErrInvalid, "too_many_tags", "tools[%d] (%q) dependencies[%d] carries %d tags; meshd accepts at most %d tags per tool or dependency", i, t.FunctionName, j, n, c.MaxTags)
			}
		}
	}
	return refusal(ErrInvalid, "too_many_dependencies", "registration declares %d dependencies; meshd accepts at most %d dependencies per agent, all tools together", total, c.MaxDependencies)
}

// canonical returns the body as the registry stores and compares it:
// compact, keys sorted, and without "timestamp", which agents may stamp
// on every heartbeat and which says nothing about the agent.
func canonical(body []byte) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, err
	}
	// Not stored, but one that is not RFC 3339 is refused, as MCP Mesh
	// refuses it (null is no timestamp).
	if ts, ok := fields["timestamp"]; ok {
		var t *time.Time
		if err := json.Unmarshal(ts, &t); err != nil {
			return nil, err
		}
		delete(fields, "timestamp")
	}
	return json.Marshal(fields)
}

func namespace(reg meshapi.Registration) string {
	if reg.Namespace == "" {
		return "default"
	}
	return reg.Namespace
}

// endpoint is where an agent serves: https://host:port, http://host:port
// when the agent port speaks plain HTTP (TLS off), as MCP Mesh announces
// them, or stdio://<id> for an agent with no port.
func (r *Registry) endpoint(reg meshapi.Registration) string {
	if reg.HTTPPort == 0 {
		return "stdio://" + reg.AgentID
	}
	scheme := "https"
	if r.cfg.PlainHTTP {
		scheme = "http"
	}
	return fmt.Sprintf("%s://%s:%d", scheme, reg.HTTPHost, reg.HTTPPort)
}
