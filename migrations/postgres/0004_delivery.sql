-- Delivery to consumers (CRM/CDP): the registry, per-consumer progress through the log, the
-- handoff log auditors query, what consumers acknowledged, and sync exceptions.
-- Everything here is derived from the event log and the registry; none of it is a source of truth
-- about customers.

-- Who receives what, over which channel, for which purposes.
CREATE TABLE consumers (
    consumer_id    TEXT        PRIMARY KEY,
    channel        TEXT        NOT NULL CHECK (channel IN ('nats', 'webhook', 'feed')),
    webhook_url    TEXT,
    -- Stored as given: whoever can read this table can sign webhooks as us (see architecture).
    webhook_secret TEXT,
    -- JSON arrays of field selectors ("email", "consent.*", "*") and of purposes.
    fields         TEXT        NOT NULL,
    purposes       TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    disabled_at    TIMESTAMPTZ,
    CHECK ((channel = 'webhook') = (webhook_url IS NOT NULL AND webhook_secret IS NOT NULL))
);

-- The global position up to which every entitled message was delivered and acknowledged.
CREATE TABLE delivery_checkpoints (
    consumer_id TEXT        PRIMARY KEY REFERENCES consumers (consumer_id),
    position    BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

-- Every message a consumer acknowledged receiving: whose data, which fields, on what basis.
-- A re-delivery of the same message (same message_id) is not logged twice.
CREATE TABLE handoffs (
    seq             BIGSERIAL   PRIMARY KEY,
    consumer_id     TEXT        NOT NULL REFERENCES consumers (consumer_id),
    message_id      UUID        NOT NULL,
    kind            TEXT        NOT NULL CHECK (kind IN ('change', 'notice', 'resume', 'erasure')),
    event_id        UUID        NOT NULL,
    global_position BIGINT      NOT NULL,
    customer_id     UUID        NOT NULL,
    fields          TEXT        NOT NULL,
    basis           TEXT        NOT NULL,
    channel         TEXT        NOT NULL,
    delivered_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (consumer_id, message_id)
);

CREATE INDEX handoffs_customer ON handoffs (customer_id, seq);
CREATE INDEX handoffs_consumer ON handoffs (consumer_id, seq);

-- Whether a consumer currently receives a customer's data ('receiving') or was told to stop
-- and delete it ('withdrawn'); no row: it never received anything of that customer.
CREATE TABLE consumer_customers (
    consumer_id TEXT        NOT NULL REFERENCES consumers (consumer_id),
    customer_id UUID        NOT NULL,
    status      TEXT        NOT NULL CHECK (status IN ('receiving', 'withdrawn', 'erased')),
    changed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer_id, customer_id)
);

-- What each consumer says it holds, per customer and field (from its acknowledgements).
CREATE TABLE consumer_state (
    consumer_id TEXT        NOT NULL REFERENCES consumers (consumer_id),
    customer_id UUID        NOT NULL,
    field       TEXT        NOT NULL,
    event_id    UUID        NOT NULL,
    version     BIGINT      NOT NULL,
    value_hash  TEXT,
    status      TEXT        NOT NULL CHECK (status IN ('applied', 'rejected')),
    reason      TEXT,
    acked_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer_id, customer_id, field)
);

-- Things a steward must look at. At most one open exception per consumer, customer, field and
-- kind: a repeat bumps its count instead of adding a row.
CREATE TABLE sync_exceptions (
    exception_id UUID        PRIMARY KEY,
    consumer_id  TEXT        NOT NULL REFERENCES consumers (consumer_id),
    customer_id  UUID        NOT NULL,
    field        TEXT        NOT NULL DEFAULT '',
    kind         TEXT        NOT NULL,
    detail       TEXT        NOT NULL,
    status       TEXT        NOT NULL DEFAULT 'open',
    occurrences  BIGINT      NOT NULL DEFAULT 1,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

CREATE UNIQUE INDEX sync_exceptions_one_open
    ON sync_exceptions (consumer_id, customer_id, field, kind) WHERE status = 'open';
CREATE INDEX sync_exceptions_customer ON sync_exceptions (customer_id, created_at);
