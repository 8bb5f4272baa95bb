-- The disclosure log: each time a customer's data left idledger other than by delivery to a
-- consumer (which the handoff log records) — a source system's read of the record, or a copy
-- of everything given to the data subject (an access or portability export): who received
-- which fields of whom, and when. Field names only, never values.
CREATE TABLE disclosures (
    seq            BIGSERIAL   PRIMARY KEY,
    customer_id    UUID        NOT NULL,
    recipient_kind TEXT        NOT NULL CHECK (recipient_kind IN ('source', 'subject')),
    -- The source system that read; NULL for the subject.
    source_id      TEXT,
    -- The token the request came with; NULL from the command line (the operator).
    token_id       UUID,
    fields         TEXT        NOT NULL,
    disclosed_at   TIMESTAMPTZ NOT NULL,
    CHECK ((recipient_kind = 'source') = (source_id IS NOT NULL))
);

CREATE INDEX disclosures_customer ON disclosures (customer_id, seq);
CREATE INDEX disclosures_source ON disclosures (source_id, seq);
