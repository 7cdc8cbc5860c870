-- Agent records carry the registry's version of them, so that a batch
-- written after a newer record (a heartbeat's, say) cannot replace it with
-- the older copy it took. Existing rows start at 0: any change the
-- registry makes from now on is newer.
ALTER TABLE agents ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
