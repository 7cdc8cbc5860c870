-- The agent ids an entity's agents may claim, chosen at `meshctl entity
-- register`: '' (the prefix "<entity>-"), 'first-claim', or
-- 'ids:<id>,<id>,...'. Existing entities keep the prefix.
ALTER TABLE entities ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
