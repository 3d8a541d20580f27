-- Placement: resource providers with their inventories, traits and
-- aggregates; consumers and their allocations.
-- Standard resource classes and traits are known to the code; only custom
-- ones (CUSTOM_*) have rows in resource_classes / traits.

CREATE TABLE resource_providers (
    uuid                 TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    generation           BIGINT NOT NULL DEFAULT 0,
    parent_provider_uuid TEXT REFERENCES resource_providers (uuid),
    root_provider_uuid   TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    CONSTRAINT resource_providers_name_key UNIQUE (name)
);
CREATE INDEX resource_providers_root_idx ON resource_providers (root_provider_uuid);
CREATE INDEX resource_providers_parent_idx ON resource_providers (parent_provider_uuid);

CREATE TABLE resource_classes (
    name       TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);

CREATE TABLE inventories (
    provider_uuid    TEXT NOT NULL REFERENCES resource_providers (uuid) ON DELETE CASCADE,
    resource_class   TEXT NOT NULL,
    total            BIGINT NOT NULL,
    reserved         BIGINT NOT NULL DEFAULT 0,
    min_unit         BIGINT NOT NULL DEFAULT 1,
    max_unit         BIGINT NOT NULL,
    step_size        BIGINT NOT NULL DEFAULT 1,
    allocation_ratio DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    -- SUM(allocations.used) of this provider and class, kept in step by
    -- every allocation write (denormalized for the candidates query).
    used             BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (provider_uuid, resource_class)
);
CREATE INDEX inventories_class_idx ON inventories (resource_class);

CREATE TABLE traits (
    name       TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);

CREATE TABLE provider_traits (
    provider_uuid TEXT NOT NULL REFERENCES resource_providers (uuid) ON DELETE CASCADE,
    trait         TEXT NOT NULL,
    PRIMARY KEY (provider_uuid, trait)
);
CREATE INDEX provider_traits_trait_idx ON provider_traits (trait);

CREATE TABLE provider_aggregates (
    provider_uuid  TEXT NOT NULL REFERENCES resource_providers (uuid) ON DELETE CASCADE,
    aggregate_uuid TEXT NOT NULL,
    PRIMARY KEY (provider_uuid, aggregate_uuid)
);
CREATE INDEX provider_aggregates_aggregate_idx ON provider_aggregates (aggregate_uuid);

CREATE TABLE consumers (
    uuid       TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX consumers_project_user_idx ON consumers (project_id, user_id);

-- No cascade from providers: a provider with allocations cannot be deleted.
CREATE TABLE allocations (
    consumer_uuid  TEXT NOT NULL REFERENCES consumers (uuid) ON DELETE CASCADE,
    provider_uuid  TEXT NOT NULL REFERENCES resource_providers (uuid),
    resource_class TEXT NOT NULL,
    used           BIGINT NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (consumer_uuid, provider_uuid, resource_class)
);
CREATE INDEX allocations_provider_class_idx ON allocations (provider_uuid, resource_class);
