-- Households are found through the blind index (issue 17): a record's `household` value is
-- one of its identifiers from this version on. Records that already hold one have no row for
-- it yet: the index is filled again at the next start with the master key
-- (`Ledger::run_pending_upgrades`, which rewrites each customer's rows from their record).
INSERT INTO pending_upgrades (name)
SELECT 'lookup_index'
WHERE EXISTS (SELECT 1 FROM projections WHERE kind = 'field' AND key = 'household')
  AND NOT EXISTS (SELECT 1 FROM pending_upgrades WHERE name = 'lookup_index');
