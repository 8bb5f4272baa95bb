-- The event log: the only source of truth. Append-only (enforced by trigger below).
-- global_position is assigned as max+1 under a transaction-scoped advisory lock, so positions
-- are gap-free and become visible in order (see docs/architecture.md, "Ordering").
CREATE TABLE events (
    global_position BIGINT PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    customer_id     UUID        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    field           TEXT,
    recorded_at     TIMESTAMPTZ NOT NULL,
    -- nonce || XChaCha20-Poly1305 ciphertext of the event data, under the customer's data key
    payload         BYTEA       NOT NULL,
    -- sha256 over the stream predecessor's hash and every column above
    hash            BYTEA       NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (customer_id, stream_version)
);

CREATE INDEX events_customer_field ON events (customer_id, field, stream_version);

CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % is not allowed', TG_OP;
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

-- One data key per customer, wrapped by the master key. Deleting a row crypto-shreds the
-- customer's events.
CREATE TABLE data_keys (
    customer_id UUID PRIMARY KEY,
    wrapped_key BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- First result of every command, by the source that sent it and its idempotency key.
CREATE TABLE idempotency (
    source          TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    customer_id     UUID        NOT NULL,
    request_hash    BYTEA       NOT NULL,
    result          TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, idempotency_key)
);

-- Per-customer projection, written in the append transaction: kind is customer, field,
-- consent or proposal; record is the JSON text of the domain's record.
CREATE TABLE projections (
    customer_id UUID NOT NULL,
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (customer_id, kind, key)
);
