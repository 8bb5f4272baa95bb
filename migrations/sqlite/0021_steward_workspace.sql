-- The data steward's workspace (issue 18): who works an exception, what each steward did,
-- and steward overrides waiting for a second steward's approval (four-eyes). Same shape as
-- the PostgreSQL schema; times are microseconds since the Unix epoch (UTC).

-- The steward an exception is assigned to (`steward:<label>`) and since when.
ALTER TABLE sync_exceptions ADD COLUMN assigned_to TEXT;
ALTER TABLE sync_exceptions ADD COLUMN assigned_at INTEGER;
CREATE INDEX sync_exceptions_assigned ON sync_exceptions (assigned_to, exception_id);

-- Every steward action, one row each, for the per-steward activity view. Written in the
-- transaction of the action itself. `reason` may quote the record: erasure replaces it.
CREATE TABLE steward_activity (
    activity_id  BLOB        PRIMARY KEY,
    steward      TEXT        NOT NULL,
    action       TEXT        NOT NULL,
    exception_id BLOB,
    approval_id  BLOB,
    customer_id  BLOB        NOT NULL,
    field        TEXT        NOT NULL DEFAULT '',
    -- JSON array of the ids of the events the action recorded in the customer's log.
    event_ids    TEXT        NOT NULL DEFAULT '[]',
    -- What the action was about beyond the exception: the assignee of an assignment.
    detail       TEXT,
    reason       TEXT,
    at           INTEGER     NOT NULL
);
CREATE INDEX steward_activity_steward ON steward_activity (steward, activity_id);
CREATE INDEX steward_activity_customer ON steward_activity (customer_id);

-- A steward's override of a four-eyes field, waiting for a second steward. The request
-- (action, reason, value) carries personal data: sealed under the customer's data key, and
-- erasure deletes the customer's rows.
CREATE TABLE steward_approvals (
    approval_id   BLOB        PRIMARY KEY,
    exception_id  BLOB        NOT NULL,
    customer_id   BLOB        NOT NULL,
    field         TEXT        NOT NULL,
    requested_by  TEXT        NOT NULL,
    request       BLOB        NOT NULL,
    requested_at  INTEGER     NOT NULL,
    status        TEXT        NOT NULL DEFAULT 'pending'
                              CHECK (status IN ('pending', 'approved', 'rejected', 'void')),
    decided_by    TEXT,
    decided_at    INTEGER,
    decision_note TEXT
);
CREATE UNIQUE INDEX steward_approvals_one_pending
    ON steward_approvals (exception_id) WHERE status = 'pending';
CREATE INDEX steward_approvals_status ON steward_approvals (status, approval_id);
CREATE INDEX steward_approvals_customer ON steward_approvals (customer_id);
