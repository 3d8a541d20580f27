-- The scheduler's shared state.

-- Recent build failures per compute host (BuildFailureWeigher); a success
-- resets the count, as Nova's compute does.
CREATE TABLE scheduler_host_stats (
    host          TEXT PRIMARY KEY,
    failed_builds BIGINT NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL
);

-- Named row locks: claims that must not interleave (members of one server
-- group) bump the same row in their transaction.
CREATE TABLE scheduler_locks (
    name       TEXT PRIMARY KEY,
    generation BIGINT NOT NULL DEFAULT 0
);

-- The scheduler's host-state cache reads the providers changed since its
-- last look.
CREATE INDEX resource_providers_updated_idx ON resource_providers (updated_at);
