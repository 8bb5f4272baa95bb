-- Reconciliation and the data steward's workflow: each consumer's delivery SLA, the lifecycle of
-- sync exceptions, reconciliation runs with their reports and findings, and the rows of uploaded
-- consumer snapshots while they are compared. Everything here is derived from the event log, the
-- consumer registry and what consumers report; none of it is a source of truth about customers.

-- How long a change may stay unacknowledged before reconciliation calls it undelivered or stale.
ALTER TABLE consumers ADD COLUMN sla_secs BIGINT NOT NULL DEFAULT 300 CHECK (sla_secs >= 0);

-- Exceptions are also raised about source systems (refused writes, proposals), so the system id
-- (`consumer_id`) no longer has to name a registered consumer.
ALTER TABLE sync_exceptions DROP CONSTRAINT sync_exceptions_consumer_id_fkey;
ALTER TABLE sync_exceptions ADD CONSTRAINT sync_exceptions_status
    CHECK (status IN ('open', 'resolved', 'dismissed'));
-- Who closed it (a steward token's label, or `idledger` when its cause went away), how
-- (`accepted`, `dismissed`, `auto`) and why.
ALTER TABLE sync_exceptions ADD COLUMN resolved_at TIMESTAMPTZ;
ALTER TABLE sync_exceptions ADD COLUMN resolved_by TEXT;
ALTER TABLE sync_exceptions ADD COLUMN resolution TEXT;
ALTER TABLE sync_exceptions ADD COLUMN resolution_note TEXT;
-- The last steward action that did not close it (a re-push), as JSON.
ALTER TABLE sync_exceptions ADD COLUMN last_action TEXT;
CREATE INDEX sync_exceptions_status ON sync_exceptions (status, exception_id);

-- One reconciliation: over acknowledged state ('acks') or an uploaded snapshot ('snapshot'),
-- for one consumer or all (consumer_id NULL).
CREATE TABLE reconcile_runs (
    run_id       UUID        PRIMARY KEY,
    kind         TEXT        NOT NULL CHECK (kind IN ('acks', 'snapshot')),
    trigger      TEXT        NOT NULL,
    consumer_id  TEXT,
    requested_by TEXT        NOT NULL,
    status       TEXT        NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ,
    -- JSON: the report so far while running, the full report once finished.
    report       TEXT        NOT NULL,
    error        TEXT
);

CREATE INDEX reconcile_runs_started ON reconcile_runs (started_at);

-- Every difference a run found (a snapshot's full diff, or what an acks run detected).
CREATE TABLE reconcile_findings (
    run_id      UUID   NOT NULL REFERENCES reconcile_runs (run_id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    consumer_id TEXT   NOT NULL,
    -- As the snapshot gave it (an invalid row's id may not be a UUID).
    customer_id TEXT   NOT NULL,
    field       TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    detail      TEXT   NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- An uploaded snapshot's rows, kept only while its run compares them.
CREATE TABLE snapshot_rows (
    run_id      UUID   NOT NULL,
    customer_id UUID   NOT NULL,
    field       TEXT   NOT NULL,
    -- NULL: the consumer holds the field without a value.
    value_hash  TEXT,
    line        BIGINT NOT NULL,
    PRIMARY KEY (run_id, customer_id, field)
);
