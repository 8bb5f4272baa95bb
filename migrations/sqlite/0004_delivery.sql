-- Delivery to consumers (CRM/CDP): the registry, per-consumer progress through the log, the
-- handoff log auditors query, what consumers acknowledged, and sync exceptions.
-- Same shape as the PostgreSQL schema; times are microseconds since the Unix epoch (UTC).

CREATE TABLE consumers (
    consumer_id    TEXT    PRIMARY KEY,
    channel        TEXT    NOT NULL CHECK (channel IN ('nats', 'webhook', 'feed')),
    webhook_url    TEXT,
    -- Stored as given: whoever can read this file can sign webhooks as us (see architecture).
    webhook_secret TEXT,
    fields         TEXT    NOT NULL,
    purposes       TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    disabled_at    INTEGER,
    CHECK ((channel = 'webhook') = (webhook_url IS NOT NULL AND webhook_secret IS NOT NULL))
);

CREATE TABLE delivery_checkpoints (
    consumer_id TEXT    PRIMARY KEY REFERENCES consumers (consumer_id),
    position    INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE handoffs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer_id     TEXT    NOT NULL REFERENCES consumers (consumer_id),
    message_id      BLOB    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('change', 'notice', 'resume', 'erasure')),
    event_id        BLOB    NOT NULL,
    global_position INTEGER NOT NULL,
    customer_id     BLOB    NOT NULL,
    fields          TEXT    NOT NULL,
    basis           TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    delivered_at    INTEGER NOT NULL,
    UNIQUE (consumer_id, message_id)
);

CREATE INDEX handoffs_customer ON handoffs (customer_id, seq);
CREATE INDEX handoffs_consumer ON handoffs (consumer_id, seq);

CREATE TABLE consumer_customers (
    consumer_id TEXT    NOT NULL REFERENCES consumers (consumer_id),
    customer_id BLOB    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('receiving', 'withdrawn', 'erased')),
    changed_at  INTEGER NOT NULL,
    PRIMARY KEY (consumer_id, customer_id)
);

CREATE TABLE consumer_state (
    consumer_id TEXT    NOT NULL REFERENCES consumers (consumer_id),
    customer_id BLOB    NOT NULL,
    field       TEXT    NOT NULL,
    event_id    BLOB    NOT NULL,
    version     INTEGER NOT NULL,
    value_hash  TEXT,
    status      TEXT    NOT NULL CHECK (status IN ('applied', 'rejected')),
    reason      TEXT,
    acked_at    INTEGER NOT NULL,
    PRIMARY KEY (consumer_id, customer_id, field)
);

CREATE TABLE sync_exceptions (
    exception_id BLOB    PRIMARY KEY,
    consumer_id  TEXT    NOT NULL REFERENCES consumers (consumer_id),
    customer_id  BLOB    NOT NULL,
    field        TEXT    NOT NULL DEFAULT '',
    kind         TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'open',
    occurrences  INTEGER NOT NULL DEFAULT 1,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

CREATE UNIQUE INDEX sync_exceptions_one_open
    ON sync_exceptions (consumer_id, customer_id, field, kind) WHERE status = 'open';
CREATE INDEX sync_exceptions_customer ON sync_exceptions (customer_id, created_at);
