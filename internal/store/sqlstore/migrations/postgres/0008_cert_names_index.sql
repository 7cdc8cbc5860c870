-- One index for every lookup of certificates by name instead of three (as
-- SQLite's 0016): every certificate recorded wrote a page of each.
-- certs_names leads with agent_node, which every row holds as '' or the
-- text after the first '@' of its own common name (certArgs stores
-- store.AgentNodeID), so a lookup by name asks for agent_node IN ('',
-- that text) AND common_name = the name (see nameNode).
DROP INDEX certs_common_name;
DROP INDEX certs_agent_node;
DROP INDEX certs_agent_names;
CREATE INDEX certs_names ON certs (agent_node, common_name, not_after);
