package agent

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/meshapi"
)

// Registered is the registry's answer to one registration (a POST
// /heartbeat it accepted), as Config.OnRegister receives it.
type Registered struct {
	// Message is the registry's ("Agent registered via heartbeat").
	Message string
	// Rotate reports that the registry asked for fresh credentials.
	Rotate bool
	// Dependencies maps each of the agent's tools (by function name) to
	// the providers of its dependencies, in the order declared.
	Dependencies map[string][]meshapi.Resolution
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
