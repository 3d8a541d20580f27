-- Instances (servers) and what hangs off them: metadata, tags, faults,
-- instance actions and their events, security groups, server groups.
--
-- Instances are soft-deleted (`deleted`, `deleted_at`) so that their
-- instance actions stay readable (os-instance-actions reads deleted
-- instances from 2.21) and `deleted=True` listings work for admins.
-- Every state change bumps `generation`; writers that act on what they
-- read carry the generation they saw (see db::instances).

CREATE TABLE instances (
    uuid                        TEXT PRIMARY KEY,
    project_id                  TEXT NOT NULL,
    user_id                     TEXT NOT NULL,
    display_name                TEXT NOT NULL,
    display_description         TEXT,
    hostname                    TEXT NOT NULL,
    reservation_id              TEXT NOT NULL,
    launch_index                BIGINT NOT NULL DEFAULT 0,
    -- '' when booted from a volume (never, today).
    image_ref                   TEXT NOT NULL DEFAULT '',
    kernel_id                   TEXT,
    ramdisk_id                  TEXT,
    -- The flavor as it was when the instance got it (Nova embeds a copy).
    flavor_id                   TEXT NOT NULL,
    flavor_name                 TEXT NOT NULL,
    vcpus                       BIGINT NOT NULL,
    memory_mb                   BIGINT NOT NULL,
    root_gb                     BIGINT NOT NULL,
    ephemeral_gb                BIGINT NOT NULL DEFAULT 0,
    swap_mb                     BIGINT NOT NULL DEFAULT 0,
    flavor_extra_specs          TEXT NOT NULL DEFAULT '{}',
    -- During a resize: the flavors (JSON, same shape as the columns above).
    old_flavor                  TEXT,
    new_flavor                  TEXT,
    key_name                    TEXT,
    key_data                    TEXT,
    user_data                   TEXT,
    config_drive                TEXT NOT NULL DEFAULT '',
    disk_config                 TEXT NOT NULL DEFAULT 'MANUAL',
    access_ip_v4                TEXT,
    access_ip_v6                TEXT,
    root_device_name            TEXT,
    -- The zone the instance is in (requested, or its host's once scheduled).
    availability_zone           TEXT,
    -- The zone the user asked for (2.96 pinned_availability_zone).
    requested_availability_zone TEXT,
    -- An admin's `zone:host:node` or 2.74 host/hypervisor_hostname.
    forced_host                 TEXT,
    forced_node                 TEXT,
    -- os:scheduler_hints as given (JSON object).
    scheduler_hints             TEXT NOT NULL DEFAULT '{}',
    host                        TEXT,
    node                        TEXT,
    launched_on                 TEXT,
    -- The running VMM incarnation (conductor and agent).
    vmm_id                      TEXT,
    vm_state                    TEXT NOT NULL,
    task_state                  TEXT,
    power_state                 BIGINT NOT NULL DEFAULT 0,
    progress                    BIGINT NOT NULL DEFAULT 0,
    locked                      INTEGER NOT NULL DEFAULT FALSE,
    locked_by                   TEXT,
    locked_reason               TEXT,
    launched_at                 TEXT,
    terminated_at               TEXT,
    created_at                  TEXT NOT NULL,
    updated_at                  TEXT NOT NULL,
    deleted                     INTEGER NOT NULL DEFAULT FALSE,
    deleted_at                  TEXT,
    generation                  BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX instances_project_created_idx ON instances (project_id, deleted, created_at, uuid);
CREATE INDEX instances_created_idx ON instances (deleted, created_at, uuid);
CREATE INDEX instances_host_idx ON instances (host);
CREATE INDEX instances_reservation_idx ON instances (reservation_id);

CREATE TABLE instance_metadata (
    instance_uuid TEXT NOT NULL REFERENCES instances (uuid) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (instance_uuid, key)
);

CREATE TABLE instance_tags (
    instance_uuid TEXT NOT NULL REFERENCES instances (uuid) ON DELETE CASCADE,
    tag           TEXT NOT NULL,
    PRIMARY KEY (instance_uuid, tag)
);
CREATE INDEX instance_tags_tag_idx ON instance_tags (tag);

-- Faults: the newest one is shown as `fault` while the instance is in ERROR.
CREATE TABLE instance_faults (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_uuid TEXT NOT NULL REFERENCES instances (uuid) ON DELETE CASCADE,
    code          BIGINT NOT NULL,
    message       TEXT NOT NULL,
    details       TEXT NOT NULL DEFAULT '',
    host          TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX instance_faults_instance_idx ON instance_faults (instance_uuid, id);

-- os-instance-actions: one action per request and instance, with events.
CREATE TABLE instance_actions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_uuid TEXT NOT NULL REFERENCES instances (uuid) ON DELETE CASCADE,
    request_id    TEXT NOT NULL,
    action        TEXT NOT NULL,
    project_id    TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    start_time    TEXT NOT NULL,
    finish_time   TEXT,
    message       TEXT,
    updated_at    TEXT NOT NULL,
    CONSTRAINT instance_actions_request_key UNIQUE (instance_uuid, request_id)
);

CREATE TABLE instance_action_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    action_id   BIGINT NOT NULL REFERENCES instance_actions (id) ON DELETE CASCADE,
    event       TEXT NOT NULL,
    start_time  TEXT NOT NULL,
    finish_time TEXT,
    result      TEXT,
    traceback   TEXT,
    host        TEXT,
    details     TEXT
);
CREATE INDEX instance_action_events_action_idx ON instance_action_events (action_id);

-- The instance's security groups (Nova's instance.security_groups): given to
-- each port made for it, and shown even when it has no port.
CREATE TABLE instance_security_groups (
    instance_uuid     TEXT NOT NULL REFERENCES instances (uuid) ON DELETE CASCADE,
    security_group_id TEXT NOT NULL REFERENCES security_groups (id),
    PRIMARY KEY (instance_uuid, security_group_id)
);
CREATE INDEX instance_security_groups_group_idx ON instance_security_groups (security_group_id);

-- Server groups. `rules` is a JSON object ({"max_server_per_host": N}).
CREATE TABLE server_groups (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid       TEXT NOT NULL,
    project_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    policy     TEXT NOT NULL,
    rules      TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    CONSTRAINT server_groups_uuid_key UNIQUE (uuid)
);
CREATE INDEX server_groups_project_idx ON server_groups (project_id);

-- An instance is in at most one group.
CREATE TABLE server_group_members (
    group_id      BIGINT NOT NULL REFERENCES server_groups (id) ON DELETE CASCADE,
    instance_uuid TEXT NOT NULL REFERENCES instances (uuid) ON DELETE CASCADE,
    PRIMARY KEY (group_id, instance_uuid),
    CONSTRAINT server_group_members_instance_key UNIQUE (instance_uuid)
);
