-- Compute (Nova v2.1): flavors, key pairs, compute services and nodes,
-- host aggregates and quotas. Instances and what hangs off them are in
-- 0012_instances.sql; networks and security groups in 0011_network.sql.

-- Flavors. `id` is the public flavor id (Nova's flavorid, any string).
CREATE TABLE flavors (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    memory_mb    BIGINT NOT NULL,
    vcpus        BIGINT NOT NULL,
    root_gb      BIGINT NOT NULL,
    ephemeral_gb BIGINT NOT NULL DEFAULT 0,
    swap_mb      BIGINT NOT NULL DEFAULT 0,
    rxtx_factor  DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    is_public    INTEGER NOT NULL DEFAULT TRUE,
    disabled     INTEGER NOT NULL DEFAULT FALSE,
    description  TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT,
    CONSTRAINT flavors_name_key UNIQUE (name)
);

CREATE TABLE flavor_extra_specs (
    flavor_id TEXT NOT NULL REFERENCES flavors (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (flavor_id, key)
);

-- Projects that may use a private flavor.
CREATE TABLE flavor_projects (
    flavor_id  TEXT NOT NULL REFERENCES flavors (id) ON DELETE CASCADE,
    project_id TEXT NOT NULL,
    PRIMARY KEY (flavor_id, project_id)
);
CREATE INDEX flavor_projects_project_idx ON flavor_projects (project_id);

-- Key pairs belong to a user (not a project), unique by name per user.
CREATE TABLE key_pairs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    type        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    CONSTRAINT key_pairs_user_name_key UNIQUE (user_id, name)
);

-- Compute services (nova-compute's `services` rows): one per agent host
-- and binary. `updated_at` is the last heartbeat.
CREATE TABLE compute_services (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid            TEXT NOT NULL,
    host            TEXT NOT NULL,
    binary_name     TEXT NOT NULL,
    topic           TEXT NOT NULL,
    disabled        INTEGER NOT NULL DEFAULT FALSE,
    disabled_reason TEXT,
    forced_down     INTEGER NOT NULL DEFAULT FALSE,
    report_count    BIGINT NOT NULL DEFAULT 0,
    version         TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    updated_at      TEXT,
    CONSTRAINT compute_services_uuid_key UNIQUE (uuid),
    CONSTRAINT compute_services_host_binary_key UNIQUE (host, binary_name)
);

-- Compute nodes (hypervisors): one per agent host, with what the agent
-- reports. `uuid` is the host's placement resource provider.
CREATE TABLE compute_nodes (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid                TEXT NOT NULL,
    service_id          BIGINT REFERENCES compute_services (id) ON DELETE SET NULL,
    host                TEXT NOT NULL,
    hypervisor_hostname TEXT NOT NULL,
    hypervisor_type     TEXT NOT NULL DEFAULT 'mica',
    hypervisor_version  BIGINT NOT NULL DEFAULT 0,
    host_ip             TEXT NOT NULL DEFAULT '',
    cpu_info            TEXT NOT NULL DEFAULT '{}',
    vcpus               BIGINT NOT NULL DEFAULT 0,
    memory_mb           BIGINT NOT NULL DEFAULT 0,
    local_gb            BIGINT NOT NULL DEFAULT 0,
    vcpus_used          BIGINT NOT NULL DEFAULT 0,
    memory_mb_used      BIGINT NOT NULL DEFAULT 0,
    local_gb_used       BIGINT NOT NULL DEFAULT 0,
    running_vms         BIGINT NOT NULL DEFAULT 0,
    created_at          TEXT NOT NULL,
    updated_at          TEXT,
    CONSTRAINT compute_nodes_uuid_key UNIQUE (uuid),
    CONSTRAINT compute_nodes_hypervisor_hostname_key UNIQUE (hypervisor_hostname)
);
CREATE INDEX compute_nodes_host_idx ON compute_nodes (host);

-- Host aggregates. The availability zone is the metadata key
-- `availability_zone`, as in Nova.
CREATE TABLE aggregates (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid       TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT,
    CONSTRAINT aggregates_uuid_key UNIQUE (uuid),
    CONSTRAINT aggregates_name_key UNIQUE (name)
);

CREATE TABLE aggregate_hosts (
    aggregate_id BIGINT NOT NULL REFERENCES aggregates (id) ON DELETE CASCADE,
    host         TEXT NOT NULL,
    PRIMARY KEY (aggregate_id, host)
);
CREATE INDEX aggregate_hosts_host_idx ON aggregate_hosts (host);

CREATE TABLE aggregate_metadata (
    aggregate_id BIGINT NOT NULL REFERENCES aggregates (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,
    PRIMARY KEY (aggregate_id, key)
);
CREATE INDEX aggregate_metadata_key_idx ON aggregate_metadata (key);

-- Quota limits: per project (user_id = '') or per user in a project.
-- Missing rows mean the default ([quota] in the configuration, or a
-- `default` quota class row in quota_classes).
CREATE TABLE quotas (
    project_id TEXT NOT NULL,
    user_id    TEXT NOT NULL DEFAULT '',
    resource   TEXT NOT NULL,
    hard_limit BIGINT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (project_id, user_id, resource)
);

CREATE TABLE quota_classes (
    class_name TEXT NOT NULL,
    resource   TEXT NOT NULL,
    hard_limit BIGINT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (class_name, resource)
);

-- One row per project that ever created something under quota: quota
-- checks lock it (a generation bump) so that concurrent creates count
-- usage one at a time and can never exceed a limit together.
CREATE TABLE quota_locks (
    project_id TEXT PRIMARY KEY,
    generation BIGINT NOT NULL DEFAULT 0
);
