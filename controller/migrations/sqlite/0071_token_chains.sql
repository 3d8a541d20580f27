-- A rescoped token remembers the audit id of the token it came from, so
-- that revoking a token revokes every token rescoped from it (and theirs).
ALTER TABLE tokens ADD COLUMN parent_audit_id TEXT;

CREATE INDEX tokens_parent_audit_idx ON tokens (parent_audit_id);
CREATE INDEX tokens_audit_idx ON tokens (audit_id);
