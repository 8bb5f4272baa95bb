-- Where a consumer processes data (issue 14): consumers are processors, so delivery to one in
-- another country follows the same transfer rules as a decision. NULL region: where the
-- controller does (no transfer), as every consumer registered before this.
ALTER TABLE consumers ADD COLUMN region TEXT;
ALTER TABLE consumers ADD COLUMN transfer_basis TEXT
    CHECK (transfer_basis IN ('adequacy', 'scc', 'bcr', 'derogation'));
