-- Reconciliation and the data steward's workflow; same shape as the PostgreSQL schema (see
-- there for the why of each column). Times are microseconds since the Unix epoch (UTC).

ALTER TABLE consumers ADD COLUMN sla_secs INTEGER NOT NULL DEFAULT 300 CHECK (sla_secs >= 0);

-- SQLite cannot drop a foreign key in place: rebuild sync_exceptions without it.
CREATE TABLE sync_exceptions_next (
    exception_id    BLOB    PRIMARY KEY,
    consumer_id     TEXT    NOT NULL,
    customer_id     BLOB    NOT NULL,
    field           TEXT    NOT NULL DEFAULT '',
    kind            TEXT    NOT NULL,
    detail          TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'open'
                            CHECK (status IN ('open', 'resolved', 'dismissed')),
    occurrences     INTEGER NOT NULL DEFAULT 1,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    resolved_at     INTEGER,
    resolved_by     TEXT,
    resolution      TEXT,
    resolution_note TEXT,
    last_action     TEXT
);
INSERT INTO sync_exceptions_next (exception_id, consumer_id, customer_id, field, kind, detail,
                                  status, occurrences, created_at, updated_at)
    SELECT exception_id, consumer_id, customer_id, field, kind, detail, status, occurrences,
           created_at, updated_at
    FROM sync_exceptions;
DROP TABLE sync_exceptions;
ALTER TABLE sync_exceptions_next RENAME TO sync_exceptions;

CREATE UNIQUE INDEX sync_exceptions_one_open
    ON sync_exceptions (consumer_id, customer_id, field, kind) WHERE status = 'open';
CREATE INDEX sync_exceptions_customer ON sync_exceptions (customer_id, created_at);
CREATE INDEX sync_exceptions_status ON sync_exceptions (status, exception_id);

CREATE TABLE reconcile_runs (
    run_id       BLOB    PRIMARY KEY,
    kind         TEXT    NOT NULL CHECK (kind IN ('acks', 'snapshot')),
    trigger      TEXT    NOT NULL,
    consumer_id  TEXT,
    requested_by TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    report       TEXT    NOT NULL,
    error        TEXT
);

CREATE INDEX reconcile_runs_started ON reconcile_runs (started_at);

CREATE TABLE reconcile_findings (
    run_id      BLOB    NOT NULL REFERENCES reconcile_runs (run_id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    consumer_id TEXT    NOT NULL,
    customer_id TEXT    NOT NULL,
    field       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE snapshot_rows (
    run_id      BLOB    NOT NULL,
    customer_id BLOB    NOT NULL,
    field       TEXT    NOT NULL,
    value_hash  TEXT,
    line        INTEGER NOT NULL,
    PRIMARY KEY (run_id, customer_id, field)
);
