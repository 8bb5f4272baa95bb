-- Restriction of processing (GDPR Art. 18): a consumer that was receiving a customer's data
-- and was told to keep it without using it is 'restricted' until the restriction is lifted.
ALTER TABLE consumer_customers DROP CONSTRAINT consumer_customers_status_check;
ALTER TABLE consumer_customers ADD CONSTRAINT consumer_customers_status_check
    CHECK (status IN ('receiving', 'withdrawn', 'erased', 'restricted'));
