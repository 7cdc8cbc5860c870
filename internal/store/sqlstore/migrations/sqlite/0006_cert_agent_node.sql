-- The node of every agent certificate ("ct200" for "opus@ct200"), so a
-- node's agents are found by an index rather than a scan of every
-- certificate: a node's revocation revokes them, and a node may hold only
-- so many agent identities.
ALTER TABLE certs ADD COLUMN agent_node TEXT NOT NULL DEFAULT '';

UPDATE certs SET agent_node = substr(common_name, instr(common_name, '@') + 1)
	WHERE kind = 'agent' AND instr(common_name, '@') > 0;

CREATE INDEX certs_agent_node ON certs (agent_node, not_after) WHERE agent_node <> '';
