-- Console tokens (Nova's console_auth_tokens): what `remote-consoles` and
-- the os-get*Console actions hand out, checked by the console proxy. Only
-- the token's SHA-256 is kept; a token dies with its instance.
CREATE TABLE console_auth_tokens (
    token_hash    TEXT PRIMARY KEY,
    instance_uuid TEXT NOT NULL REFERENCES instances (uuid) ON DELETE CASCADE,
    -- `novnc` or `serial`.
    console_type  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);

CREATE INDEX console_auth_tokens_instance_idx ON console_auth_tokens (instance_uuid);
CREATE INDEX console_auth_tokens_expires_idx ON console_auth_tokens (expires_at);
