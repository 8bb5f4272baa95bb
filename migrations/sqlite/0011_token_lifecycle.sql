-- Token lifecycle: an optional expiry (a rotated token keeps working until the overlap ends)
-- and when the token was last used (kept to the minute). Microseconds, like the other token
-- times.
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE api_tokens ADD COLUMN last_used_at INTEGER;
