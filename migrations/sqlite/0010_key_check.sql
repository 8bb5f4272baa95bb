-- A check value of the master key the store was written with (an HMAC of a fixed label under
-- it; reveals nothing of the key): a wrong key is refused at start-up even when every customer
-- whose data key could have told is erased.
CREATE TABLE master_key_check (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    check_value BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);
