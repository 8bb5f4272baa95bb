-- Restriction of processing (GDPR Art. 18): a consumer that was receiving a customer's data
-- and was told to keep it without using it is 'restricted' until the restriction is lifted.
-- SQLite cannot change a CHECK constraint: the table is rebuilt with the new one.
CREATE TABLE consumer_customers_new (
    consumer_id TEXT    NOT NULL REFERENCES consumers (consumer_id),
    customer_id BLOB    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('receiving', 'withdrawn', 'erased', 'restricted')),
    changed_at  INTEGER NOT NULL,
    PRIMARY KEY (consumer_id, customer_id)
);
INSERT INTO consumer_customers_new (consumer_id, customer_id, status, changed_at)
    SELECT consumer_id, customer_id, status, changed_at FROM consumer_customers;
DROP TABLE consumer_customers;
ALTER TABLE consumer_customers_new RENAME TO consumer_customers;
