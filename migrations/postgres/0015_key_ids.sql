-- Key ids (issue 15, "Keys"): each wrapped key records the id of the master key that wrapped
-- it (a short HMAC of a fixed label under the key; reveals nothing of it), so that a store
-- midway through `idledger keys rewrap` tells which key each one needs. NULL: wrapped before
-- ids were stored, by the key whose check value is in master_key_check.
ALTER TABLE data_keys ADD COLUMN key_id TEXT;

-- The secret every derived key comes from (challenge secrets, value-hash keys, aliases,
-- request hashes), wrapped under the master key like a data key, so that rotating the master
-- key changes none of them.
CREATE TABLE derivation_root (
    id          INTEGER     PRIMARY KEY CHECK (id = 1),
    wrapped_key BYTEA       NOT NULL,
    key_id      TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

-- An unfinished rewrap: the key it moves everything to. While this row exists only
-- `idledger keys rewrap` opens the store with a key.
CREATE TABLE key_rewrap (
    id           INTEGER     PRIMARY KEY CHECK (id = 1),
    new_key_id   TEXT        NOT NULL,
    new_check    BYTEA       NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL
);
