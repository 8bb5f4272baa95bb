-- What a survivor records about a record merged into it is sealed under that record's data
-- key, so that erasing it after an unmerge leaves none of its data readable in the
-- survivor's history (issue 17). NULL: sealed under the stream's own customer's key, as
-- every event before this version.
ALTER TABLE events ADD COLUMN key_owner UUID;
