-- The conductor's persisted sagas (see src/saga.rs): one row per saga, one
-- per step it reached, and the signals (agent reports) sagas wait for.

CREATE TABLE sagas (
    id          TEXT PRIMARY KEY,
    -- Which saga definition runs it (`build`, `instance_action`, …).
    kind        TEXT NOT NULL,
    -- What it acts on (an instance UUID), for operators and the sweeper of
    -- stale task states.
    target      TEXT,
    -- JSON parameters, fixed at creation.
    params      TEXT NOT NULL,
    -- running | unwinding | unwound | done | failed
    state       TEXT NOT NULL,
    -- JSON of the failure that made it unwind.
    error       TEXT,
    -- The conductor running it, and until when that claim holds.
    owner       TEXT,
    lease_until TEXT NOT NULL,
    -- Bumped by every change of owner.
    generation  BIGINT NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX sagas_state_lease_idx ON sagas (state, lease_until);
CREATE INDEX sagas_target_idx ON sagas (target);
CREATE INDEX sagas_owner_idx ON sagas (owner);

CREATE TABLE saga_steps (
    saga_id    TEXT NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    step       BIGINT NOT NULL,
    name       TEXT NOT NULL,
    -- started | done | failed | undoing | undone
    state      TEXT NOT NULL,
    -- JSON output of the action, once done.
    output     TEXT,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (saga_id, step)
);

CREATE TABLE saga_signals (
    key        TEXT PRIMARY KEY,
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX saga_signals_created_idx ON saga_signals (created_at);
