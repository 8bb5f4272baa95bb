-- A consumer registered as pseudonymous receives, instead of customer ids, its own stable
-- aliases of them (encrypted under a key derived from the master key: nothing is stored to
-- map them back). Consumers registered before keep receiving ids. 0 or 1, the same integer on
-- both engines.
ALTER TABLE consumers ADD COLUMN pseudonymous INTEGER NOT NULL DEFAULT 0 CHECK (pseudonymous IN (0, 1));
