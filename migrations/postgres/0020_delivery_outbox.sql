-- Messages a delivery task decided and is about to send (issue 16): recorded before sending,
-- so that a retry after a failure (a PubAck lost in a NATS outage, a webhook timing out, a
-- crash) sends the same messages with the same ids instead of deciding again on a state that
-- may have changed since. A row leaves in the transaction that records its handoff (or that
-- it was skipped). Payloads of a customer with a data key are sealed under it, so erasure
-- leaves them unreadable, and erasure deletes the customer's rows besides.
CREATE TABLE delivery_outbox (
    consumer_id TEXT    NOT NULL REFERENCES consumers (consumer_id),
    seq         BIGINT  NOT NULL,
    customer_id UUID    NOT NULL,
    sealed      INTEGER NOT NULL,
    payload     BYTEA   NOT NULL,
    -- The last log position the batch read (NULL: a batch that read no log, e.g. a sweep).
    through     BIGINT,
    PRIMARY KEY (consumer_id, seq)
);

CREATE INDEX delivery_outbox_customer ON delivery_outbox (customer_id);
