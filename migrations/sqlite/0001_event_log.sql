-- The event log: the only source of truth. Append-only (enforced by triggers below).
-- SQLite has one writer at a time, so global_position = max + 1 inside the write transaction
-- is gap-free and commit-ordered. Times are microseconds since the Unix epoch (UTC).
CREATE TABLE events (
    global_position INTEGER PRIMARY KEY,
    event_id        BLOB    NOT NULL UNIQUE,
    customer_id     BLOB    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    field           TEXT,
    recorded_at     INTEGER NOT NULL,
    payload         BLOB    NOT NULL,
    hash            BLOB    NOT NULL,
    UNIQUE (customer_id, stream_version)
);

CREATE INDEX events_customer_field ON events (customer_id, field, stream_version);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: DELETE is not allowed');
END;

CREATE TABLE data_keys (
    customer_id BLOB    PRIMARY KEY,
    wrapped_key BLOB    NOT NULL,
    created_at  INTEGER NOT NULL DEFAULT (unixepoch())
);

CREATE TABLE idempotency (
    source          TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    customer_id     BLOB    NOT NULL,
    request_hash    BLOB    NOT NULL,
    result          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL DEFAULT (unixepoch()),
    PRIMARY KEY (source, idempotency_key)
);

CREATE TABLE projections (
    customer_id BLOB NOT NULL,
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (customer_id, kind, key)
);
