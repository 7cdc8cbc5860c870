-- A node's agent identities, each once, in a number of index lookups that
-- grows with how many agents the node has, not with how many certificates
-- they were issued: LiveAgents runs on every /agent-cert and /renew that
-- names agents, and a node that re-mints its agents' certificates would
-- otherwise make each call slower than the last. Not partial: a query
-- binding agent_node = ? could not use an index restricted to agent_node <> ''.
CREATE INDEX certs_agent_names ON certs (agent_node, common_name);
