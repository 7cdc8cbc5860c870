-- One index for a node's agent certificates instead of two, and only over
-- agent certificates: every certificate recorded dirties a page of each
-- index it is in, and node and client certificates (agent_node '') were in
-- both. (agent_node, common_name, not_after) serves what each of them did:
-- LiveAgents' skip scan over a node's agent names, and the revocation of a
-- node's live agent certificates. A query uses it only when its WHERE says
-- agent_node <> '' in so many words.
DROP INDEX certs_agent_node;
DROP INDEX certs_agent_names;
CREATE INDEX certs_agent_names ON certs (agent_node, common_name, not_after) WHERE agent_node <> '';
