package agent

// ID returns the agent id a registers (from Config.AgentID or the payload).
func (a *Agent) ID() string { return a.id }

// AuthorizeRegistry is the default Config.AuthorizeRegistry for host.
var AuthorizeRegistry = authorizeRegistry
