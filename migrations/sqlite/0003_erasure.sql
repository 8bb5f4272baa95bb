-- Erasure (see docs/architecture.md, "Erasure").
-- Erasing a customer deletes their idempotency records in the append transaction: find them
-- without scanning the table.
CREATE INDEX idempotency_customer ON idempotency (customer_id);

-- Readers ask whether a customer without a data key was erased; few events are erasures.
CREATE INDEX events_erasures ON events (customer_id) WHERE event_type = 'customer_erased';
