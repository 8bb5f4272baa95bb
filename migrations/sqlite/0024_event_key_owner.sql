-- What a survivor records about a record merged into it is sealed under that record's data
-- key, so that erasing it after an unmerge leaves none of its data readable in the
-- survivor's history (issue 17). NULL: sealed under the stream's own customer's key, as
-- every event before this version.
ALTER TABLE events ADD COLUMN key_owner BLOB;

-- An erasure finds the copies of the erased record's data in other streams by it.
CREATE INDEX events_key_owner ON events (key_owner) WHERE key_owner IS NOT NULL;
