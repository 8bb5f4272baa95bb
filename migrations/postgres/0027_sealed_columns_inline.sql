-- Sealed values (projection records, outbox payloads, event payloads) do not compress, and a
-- field's sealed record is often over 2 KB. PostgreSQL tried to compress every such row
-- (pglz, CPU spent for nothing) and then moved the value out of line into the table's TOAST
-- relation, so each update of a field's record wrote new TOAST chunks and their index entries
-- and left the old ones dead. Stored EXTERNAL (never compressed) with the row kept whole up to
-- a page (toast_tuple_target), they stay in the row: one heap tuple per update, which can be a
-- HOT update. Only rows written from now on are affected; older ones read as before.
ALTER TABLE projections ALTER COLUMN record SET STORAGE EXTERNAL;
ALTER TABLE projections SET (toast_tuple_target = 8160);
ALTER TABLE delivery_outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
ALTER TABLE delivery_outbox SET (toast_tuple_target = 8160);
ALTER TABLE events ALTER COLUMN payload SET STORAGE EXTERNAL;
ALTER TABLE events SET (toast_tuple_target = 8160);
