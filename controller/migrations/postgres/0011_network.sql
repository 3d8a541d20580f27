-- Network (Neutron v2.0 subset): networks, subnets, ports with their
-- fixed IPs, security groups and their rules.

CREATE TABLE networks (
    id                    TEXT PRIMARY KEY,
    project_id            TEXT NOT NULL,
    name                  TEXT NOT NULL DEFAULT '',
    description           TEXT NOT NULL DEFAULT '',
    shared                BOOLEAN NOT NULL DEFAULT FALSE,
    external              BOOLEAN NOT NULL DEFAULT FALSE,
    admin_state_up        BOOLEAN NOT NULL DEFAULT TRUE,
    status                TEXT NOT NULL DEFAULT 'ACTIVE',
    mtu                   BIGINT NOT NULL DEFAULT 1500,
    network_type          TEXT NOT NULL DEFAULT 'flat',
    physical_network      TEXT,
    segmentation_id       BIGINT,
    port_security_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    is_default            BOOLEAN NOT NULL DEFAULT FALSE,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    revision_number       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX networks_project_idx ON networks (project_id);

-- allocation_pools: JSON [{"start","end"}]; dns_nameservers and
-- host_routes: JSON arrays.
CREATE TABLE subnets (
    id               TEXT PRIMARY KEY,
    network_id       TEXT NOT NULL REFERENCES networks (id),
    project_id       TEXT NOT NULL,
    name             TEXT NOT NULL DEFAULT '',
    description      TEXT NOT NULL DEFAULT '',
    ip_version       BIGINT NOT NULL,
    cidr             TEXT NOT NULL,
    gateway_ip       TEXT,
    enable_dhcp      BOOLEAN NOT NULL DEFAULT TRUE,
    allocation_pools TEXT NOT NULL DEFAULT '[]',
    dns_nameservers  TEXT NOT NULL DEFAULT '[]',
    host_routes      TEXT NOT NULL DEFAULT '[]',
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    revision_number  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX subnets_network_idx ON subnets (network_id);

CREATE TABLE ports (
    id                    TEXT PRIMARY KEY,
    network_id            TEXT NOT NULL REFERENCES networks (id),
    project_id            TEXT NOT NULL,
    name                  TEXT NOT NULL DEFAULT '',
    description           TEXT NOT NULL DEFAULT '',
    mac_address           TEXT NOT NULL,
    admin_state_up        BOOLEAN NOT NULL DEFAULT TRUE,
    status                TEXT NOT NULL DEFAULT 'DOWN',
    device_id             TEXT NOT NULL DEFAULT '',
    device_owner          TEXT NOT NULL DEFAULT '',
    binding_host_id       TEXT NOT NULL DEFAULT '',
    port_security_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    -- Made by the compute API for a server (not given by the user): deleted
    -- with the server rather than only unbound.
    delete_with_device    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    revision_number       BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT ports_network_mac_key UNIQUE (network_id, mac_address)
);
CREATE INDEX ports_device_idx ON ports (device_id);
CREATE INDEX ports_project_idx ON ports (project_id);
CREATE INDEX ports_host_idx ON ports (binding_host_id);

-- A fixed IP is unique in its subnet: the constraint is the last line of
-- defence behind the allocator's lock on the subnet row.
CREATE TABLE port_ips (
    port_id    TEXT NOT NULL REFERENCES ports (id) ON DELETE CASCADE,
    subnet_id  TEXT NOT NULL REFERENCES subnets (id),
    ip_address TEXT NOT NULL,
    PRIMARY KEY (port_id, subnet_id, ip_address),
    CONSTRAINT port_ips_subnet_ip_key UNIQUE (subnet_id, ip_address)
);

CREATE TABLE security_groups (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    stateful        BOOLEAN NOT NULL DEFAULT TRUE,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    revision_number BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX security_groups_project_idx ON security_groups (project_id);
-- One `default` group per project, even when two requests create it at once.
CREATE UNIQUE INDEX security_groups_default_idx ON security_groups (project_id) WHERE name = 'default';

CREATE TABLE security_group_rules (
    id                TEXT PRIMARY KEY,
    security_group_id TEXT NOT NULL REFERENCES security_groups (id) ON DELETE CASCADE,
    project_id        TEXT NOT NULL,
    direction         TEXT NOT NULL,
    ethertype         TEXT NOT NULL,
    protocol          TEXT,
    port_range_min    BIGINT,
    port_range_max    BIGINT,
    remote_ip_prefix  TEXT,
    remote_group_id   TEXT REFERENCES security_groups (id) ON DELETE CASCADE,
    description       TEXT NOT NULL DEFAULT '',
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    revision_number   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX security_group_rules_group_idx ON security_group_rules (security_group_id);
CREATE INDEX security_group_rules_remote_idx ON security_group_rules (remote_group_id);

CREATE TABLE port_security_groups (
    port_id           TEXT NOT NULL REFERENCES ports (id) ON DELETE CASCADE,
    security_group_id TEXT NOT NULL REFERENCES security_groups (id),
    PRIMARY KEY (port_id, security_group_id)
);
CREATE INDEX port_security_groups_group_idx ON port_security_groups (security_group_id);
