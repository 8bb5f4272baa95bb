-- Stream snapshots (issue 16): a customer's folded record at every 100th event of their
-- stream, so that reading the record as of an instant folds only the events after the latest
-- snapshot before that instant. `state` is the record's JSON sealed under the customer's data
-- key (it holds personal data, like the projection's rows); erasure deletes the customer's
-- snapshots in its transaction. `fold_version` is the domain's FOLD_VERSION when it was
-- folded: a snapshot of another fold is ignored, and `rebuild` rewrites it. `covers_until` is
-- the latest recorded_at among the events it covers: it serves an as-of read at any instant
-- at or after that.
CREATE TABLE stream_snapshots (
    customer_id    UUID        NOT NULL,
    stream_version BIGINT      NOT NULL,
    fold_version   BIGINT      NOT NULL,
    covers_until   TIMESTAMPTZ NOT NULL,
    state          TEXT        NOT NULL,
    PRIMARY KEY (customer_id, stream_version)
);
