-- Signed checkpoints (issue 15, "Trust boundaries").
--
-- Event hashes now cover the global position (chain v2). Events stored before this migration
-- keep their v1 hashes, which are never rewritten: v2_from is the first position hashed v2.
-- Stop every process of an older version before migrating: one still appending would write
-- v1 hashes past the boundary.
CREATE TABLE log_chain (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    v2_from INTEGER NOT NULL
);
INSERT INTO log_chain (id, v2_from) SELECT 1, COALESCE(MAX(global_position), 0) + 1 FROM events;

-- Signing keys, for any purpose ('checkpoint' now; decision tokens later). The private key is
-- sealed under a key derived from the derivation root (so a master key rewrap leaves it as it
-- is); kid = the first 16 hex characters of SHA-256 of the public key. Times in microseconds.
CREATE TABLE signing_keys (
    kid                TEXT    PRIMARY KEY,
    algorithm          TEXT    NOT NULL,
    purpose            TEXT    NOT NULL,
    public_key         BLOB    NOT NULL,
    sealed_private_key BLOB    NOT NULL,
    created_at         INTEGER NOT NULL,
    retired_at         INTEGER
);
-- One key in use per purpose; racing first signers both insert, one wins.
CREATE UNIQUE INDEX signing_keys_one_in_use ON signing_keys (purpose) WHERE retired_at IS NULL;

-- A signed statement of the log hash at a position (see docs/contracts.md). Append-only.
CREATE TABLE checkpoints (
    position  INTEGER PRIMARY KEY,
    log_hash  BLOB    NOT NULL,
    signed_at INTEGER NOT NULL,
    kid       TEXT    NOT NULL REFERENCES signing_keys (kid),
    signature BLOB    NOT NULL
);

CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints are append-only: UPDATE is not allowed');
END;

CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints are append-only: DELETE is not allowed');
END;
