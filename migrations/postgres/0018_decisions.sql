-- Decisions at the moment of use (issue 14).
--
-- Processors: systems that ask whether they may use a customer's data. Every consumer is one
-- (its purposes and fields are its registration in `consumers`); a processor that only asks
-- is registered here. One namespace: an id names a consumer or a processor, never both.
CREATE TABLE processors (
    processor_id   TEXT        PRIMARY KEY,
    -- JSON arrays of purposes and of field selectors ("email", "name.*", "*").
    purposes       TEXT        NOT NULL,
    fields         TEXT        NOT NULL,
    -- ISO 3166-1 country it processes data in; NULL: where the controller does.
    region         TEXT,
    transfer_basis TEXT        CHECK (transfer_basis IN ('adequacy', 'scc', 'bcr', 'derogation')),
    created_at     TIMESTAMPTZ NOT NULL,
    disabled_at    TIMESTAMPTZ
);

-- The decision log: every answer, allowing or not. Field names and reasons, never values.
CREATE TABLE decisions (
    seq            BIGSERIAL   PRIMARY KEY,
    decision_id    UUID        NOT NULL UNIQUE,
    decided_at     TIMESTAMPTZ NOT NULL,
    processor_id   TEXT        NOT NULL,
    -- The API token that asked.
    token_id       UUID        NOT NULL,
    customer_id    UUID        NOT NULL,
    purpose        TEXT        NOT NULL,
    -- JSON array of the tiers that applied.
    tiers          TEXT        NOT NULL,
    -- JSON array of {field, allowed, reason}.
    answers        TEXT        NOT NULL,
    allowed        INTEGER     NOT NULL CHECK (allowed IN (0, 1)),
    basis          TEXT,
    basis_event_id UUID,
    basis_version  BIGINT,
    -- The customer's stream version and the policy the answer was decided on.
    stream_version BIGINT      NOT NULL,
    policy_version TEXT        NOT NULL,
    -- When a decision token was issued: its expiry (its id is the decision id).
    token_expires_at TIMESTAMPTZ
);

CREATE INDEX decisions_customer ON decisions (customer_id, seq);
CREATE INDEX decisions_processor ON decisions (processor_id, seq);
CREATE INDEX decisions_time ON decisions (decided_at);
