-- Signed checkpoints (issue 15, "Trust boundaries").
--
-- Event hashes now cover the global position (chain v2). Events stored before this migration
-- keep their v1 hashes, which are never rewritten: v2_from is the first position hashed v2.
-- Stop every process of an older version before migrating: one still appending would write
-- v1 hashes past the boundary.
CREATE TABLE log_chain (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    v2_from BIGINT  NOT NULL
);
INSERT INTO log_chain (id, v2_from) SELECT 1, COALESCE(MAX(global_position), 0) + 1 FROM events;

-- Signing keys, for any purpose ('checkpoint' now; decision tokens later). The private key is
-- sealed under a key derived from the derivation root (so a master key rewrap leaves it as it
-- is); kid = the first 16 hex characters of SHA-256 of the public key.
CREATE TABLE signing_keys (
    kid                TEXT        PRIMARY KEY,
    algorithm          TEXT        NOT NULL,
    purpose            TEXT        NOT NULL,
    public_key         BYTEA       NOT NULL,
    sealed_private_key BYTEA       NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    retired_at         TIMESTAMPTZ
);
-- One key in use per purpose; racing first signers both insert, one wins.
CREATE UNIQUE INDEX signing_keys_one_in_use ON signing_keys (purpose) WHERE retired_at IS NULL;

-- A signed statement of the log hash at a position (see docs/contracts.md). Append-only.
CREATE TABLE checkpoints (
    position  BIGINT      PRIMARY KEY,
    log_hash  BYTEA       NOT NULL,
    signed_at TIMESTAMPTZ NOT NULL,
    kid       TEXT        NOT NULL REFERENCES signing_keys (kid),
    signature BYTEA       NOT NULL
);

CREATE FUNCTION checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'checkpoints are append-only: % is not allowed', TG_OP;
END;
$$;

CREATE TRIGGER checkpoints_append_only
    BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION checkpoints_append_only();
