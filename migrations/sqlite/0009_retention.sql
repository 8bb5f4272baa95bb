-- Retention deletes handoffs and idempotency records older than the policy's limits: find
-- them by age without scanning the tables. (Reconciliation runs are indexed by start already.)
CREATE INDEX handoffs_delivered ON handoffs (delivered_at);
CREATE INDEX idempotency_created ON idempotency (created_at);
