-- API tokens. Only the SHA-256 of each token is kept: the token itself is shown once, when it
-- is created. Each token is bound to one principal: a role and, for sources and consumers,
-- the system it speaks for.
CREATE TABLE api_tokens (
    token_id    BLOB    PRIMARY KEY,
    token_hash  BLOB    NOT NULL UNIQUE,
    role        TEXT    NOT NULL,
    subject     TEXT,
    label       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
