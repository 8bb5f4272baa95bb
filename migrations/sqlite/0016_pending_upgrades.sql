-- Rewrites a new version needs that SQL alone cannot do, because they need the master key:
-- the first process that opens the store with the key runs each pending one and deletes its
-- row (`Ledger::run_pending_upgrades`).
CREATE TABLE pending_upgrades (
    name TEXT PRIMARY KEY
);

-- Value hashes were plain SHA-256 before they were keyed per consumer: a store that holds any
-- has them rewritten under the consumers' keys.
INSERT INTO pending_upgrades (name)
SELECT 'keyed_value_hashes'
WHERE EXISTS (SELECT 1 FROM consumer_state WHERE value_hash LIKE 'sha256:%')
   OR EXISTS (SELECT 1 FROM sync_exceptions WHERE detail LIKE '%"sha256:%')
   OR EXISTS (SELECT 1 FROM reconcile_findings WHERE detail LIKE '%"sha256:%')
   OR EXISTS (SELECT 1 FROM reconcile_runs WHERE report LIKE '%"sha256:%');
