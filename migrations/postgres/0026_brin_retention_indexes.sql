-- Retention finds handoffs and idempotency records by age (0009). Both are written in the
-- order of the times the indexes are on, so a block-range index finds the old rows as well,
-- at a fraction of a B-tree's cost on every insert: one B-tree fewer on the hot path of every
-- command (idempotency) and every delivered message (handoffs). A range not yet summarised
-- (autosummarize asks autovacuum to do it as ranges fill) is read whole, never skipped, so the
-- sweep is exact whatever the index's state. SQLite keeps its B-trees: it has no such index.
DROP INDEX handoffs_delivered;
CREATE INDEX handoffs_delivered ON handoffs USING brin (delivered_at) WITH (autosummarize = on);
DROP INDEX idempotency_created;
CREATE INDEX idempotency_created ON idempotency USING brin (created_at) WITH (autosummarize = on);
