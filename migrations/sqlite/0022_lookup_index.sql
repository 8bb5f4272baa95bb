-- The blind index of identifiers (issue 17): finding a customer by email, phone, external id
-- or full name without a plaintext index. Each row is the HMAC-SHA256 of an identifier's
-- kind and normalised value under the lookup key (derived from the master key's derivation
-- root), never the value; written in the append transaction from the record's current
-- values, deleted with the customer at erasure, rebuilt by `rebuild`. An identifier may be
-- shared (a household's phone): one row per customer holding it.
CREATE TABLE lookup_index (
    digest      BLOB NOT NULL,
    customer_id BLOB NOT NULL,
    PRIMARY KEY (digest, customer_id)
);

CREATE INDEX lookup_index_customer ON lookup_index (customer_id);

-- Customers recorded before the index existed are indexed at the next start with the master
-- key (`Ledger::run_pending_upgrades`): the digests need the key, SQL alone cannot make them.
INSERT INTO pending_upgrades (name)
SELECT 'lookup_index'
WHERE EXISTS (SELECT 1 FROM projections WHERE kind = 'field');
