-- One index for every lookup of certificates by name instead of two: an
-- agent certificate was in certs_common_name (common_name, issued_at) and
-- in certs_agent_names, each at a place its name decides, so each commit
-- wrote one more index page per agent certificate to the WAL.
-- certs_names leads with agent_node, which every row holds as '' or the
-- text after the first '@' of its own common name (certArgs stores
-- store.AgentNodeID; migration 0006 stored that text for agent rows), so
-- a lookup by name asks for agent_node IN ('', that text) AND common_name
-- = the name (see nameNode), and LiveAgents' skip scan and a node's
-- revocation use its first column as certs_agent_names did.
DROP INDEX certs_common_name;
DROP INDEX certs_agent_names;
CREATE INDEX certs_names ON certs (agent_node, common_name, not_after);
