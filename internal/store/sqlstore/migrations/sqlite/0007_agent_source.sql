-- The trust backend that admitted the certificate which claimed an agent
-- ("localca", "filestore", "entities"): ownership binds it with the owner's
-- common name and entity, so a certificate of the same name from another
-- CA cannot take the agent. Existing rows have none (''); the registry
-- binds each to the source of its owner's next heartbeat.
ALTER TABLE agents ADD COLUMN source TEXT NOT NULL DEFAULT '';
