-- API tokens. Only the SHA-256 of each token is kept: the token itself is shown once, when it
-- is created. Each token is bound to one principal: a role and, for sources and consumers,
-- the system it speaks for.
CREATE TABLE api_tokens (
    token_id    UUID    PRIMARY KEY,
    token_hash  BYTEA   NOT NULL UNIQUE,
    role        TEXT    NOT NULL,
    subject     TEXT,
    label       TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    revoked_at  BIGINT
);
