-- Steward sessions: the steward page's cookie names a session, never a bearer token. Only the
-- SHA-256 of each session id is kept, like token secrets. A session is bound to the steward
-- token it was opened with (a revoked or expired token ends it) and ends at the first of its
-- idle expiry (moved on by each request) and its absolute expiry. Microseconds, like the token
-- times.
CREATE TABLE steward_sessions (
    session_hash    BLOB    PRIMARY KEY,
    token_id        BLOB    NOT NULL REFERENCES api_tokens (token_id),
    created_at      INTEGER NOT NULL,
    idle_expires_at INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);

CREATE INDEX steward_sessions_token ON steward_sessions (token_id);


-- Optional token scopes: a JSON array of the operation groups a token is limited to, within
-- what its role allows; NULL: everything its role allows.
ALTER TABLE api_tokens ADD COLUMN scopes TEXT;
