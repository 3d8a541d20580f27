//! Host tables: compute services, compute nodes (hypervisors) and host
//! aggregates.
//!
//! The conductor writes services and nodes on behalf of agents
//! ([`register_service`], [`heartbeat`], [`upsert_compute_node`]); the
//! compute API reads them (`os-services`, `os-hypervisors`,
//! `os-availability-zone`) and lets operators disable a service or force it
//! down.

use std::collections::BTreeMap;

use sqlx::{Any, AnyConnection, Executor};

use super::{Sql, Timestamp};
use crate::error::Result;

/// A compute service (one per host and binary).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ServiceRow {
    /// Integer id (shown before 2.53).
    pub id: i64,
    /// UUID (the id from 2.53).
    pub uuid: String,
    /// Host name.
    pub host: String,
    /// `nova-compute` (agents), `nova-scheduler`, `nova-conductor`.
    pub binary_name: String,
    /// `compute`, …
    pub topic: String,
    /// Disabled by an operator: no new builds.
    #[sqlx(try_from = "super::Flag")]
    pub disabled: bool,
    /// Why.
    pub disabled_reason: Option<String>,
    /// Forced down by an operator (2.11).
    #[sqlx(try_from = "super::Flag")]
    pub forced_down: bool,
    /// Heartbeats received.
    pub report_count: i64,
    /// The agent's version.
    pub version: String,
    /// Registered.
    pub created_at: Timestamp,
    /// Last heartbeat (or change).
    pub updated_at: Option<Timestamp>,
}

/// Registers (or refreshes) a service; returns it. A new service gets a
/// fresh UUID; an existing one keeps its id, UUID and disabled flag.
pub async fn register_service(
    conn: &mut AnyConnection,
    host: &str,
    binary_name: &str,
    topic: &str,
    version: &str,
) -> Result<ServiceRow> {
    let now = Timestamp::now();
    sqlx::query(
        "INSERT INTO compute_services (uuid, host, binary_name, topic, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (host, binary_name) DO UPDATE SET version = excluded.version, \
         topic = excluded.topic, updated_at = excluded.updated_at",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(host)
    .bind(binary_name)
    .bind(topic)
    .bind(version)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(
        sqlx::query_as("SELECT * FROM compute_services WHERE host = $1 AND binary_name = $2")
            .bind(host)
            .bind(binary_name)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// Records a heartbeat; false when the service is not registered.
pub async fn heartbeat<'e>(
    ex: impl Executor<'e, Database = Any>,
    host: &str,
    binary_name: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE compute_services SET report_count = report_count + 1, updated_at = $1 \
         WHERE host = $2 AND binary_name = $3",
    )
    .bind(Timestamp::now())
    .bind(host)
    .bind(binary_name)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Services, optionally only those of `host` and/or `binary_name`, by id.
pub async fn list_services<'e>(
    ex: impl Executor<'e, Database = Any>,
    host: Option<&str>,
    binary_name: Option<&str>,
) -> Result<Vec<ServiceRow>> {
    let mut q = Sql::new("SELECT * FROM compute_services WHERE 1 = 1");
    if let Some(h) = host {
        q.push(" AND host = ").bind(h.to_owned());
    }
    if let Some(b) = binary_name {
        q.push(" AND binary_name = ").bind(b.to_owned());
    }
    q.push(" ORDER BY id");
    q.fetch_all(ex).await
}

/// A service by integer id or UUID.
pub async fn get_service<'e>(
    ex: impl Executor<'e, Database = Any>,
    id_or_uuid: &str,
) -> Result<Option<ServiceRow>> {
    let mut q = Sql::new("SELECT * FROM compute_services WHERE uuid = ");
    q.bind(id_or_uuid.to_owned());
    if let Ok(n) = id_or_uuid.parse::<i64>() {
        q.push(" OR id = ").bind(n);
    }
    Ok(q.fetch_all(ex).await?.into_iter().next())
}

/// Sets a service's disabled flag and reason; false when it is gone.
pub async fn set_disabled<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: i64,
    disabled: bool,
    reason: Option<&str>,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE compute_services SET disabled = $1, disabled_reason = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(disabled)
    .bind(reason)
    .bind(Timestamp::now())
    .bind(id)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Sets a service's forced-down flag; false when it is gone.
pub async fn set_forced_down<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: i64,
    forced_down: bool,
) -> Result<bool> {
    Ok(
        sqlx::query("UPDATE compute_services SET forced_down = $1, updated_at = $2 WHERE id = $3")
            .bind(forced_down)
            .bind(Timestamp::now())
            .bind(id)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Deletes a service (its compute node loses its service link); false when
/// it is gone.
pub async fn delete_service<'e>(ex: impl Executor<'e, Database = Any>, id: i64) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM compute_services WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

// ---- compute nodes --------------------------------------------------------------

/// A compute node (hypervisor).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct NodeRow {
    /// Integer id (before 2.53).
    pub id: i64,
    /// UUID: the host's placement resource provider (the id from 2.53).
    pub uuid: String,
    /// Its service.
    pub service_id: Option<i64>,
    /// Host name.
    pub host: String,
    /// Hypervisor host name (equal to the host for Mica).
    pub hypervisor_hostname: String,
    /// `mica`.
    pub hypervisor_type: String,
    /// Version number.
    pub hypervisor_version: i64,
    /// The host's address.
    pub host_ip: String,
    /// CPU description (JSON).
    pub cpu_info: String,
    /// vCPUs (from the inventory).
    pub vcpus: i64,
    /// RAM in MiB.
    pub memory_mb: i64,
    /// Disk in GiB.
    pub local_gb: i64,
    /// vCPUs used.
    pub vcpus_used: i64,
    /// RAM used.
    pub memory_mb_used: i64,
    /// Disk used.
    pub local_gb_used: i64,
    /// Instances running, as the agent last said.
    pub running_vms: i64,
    /// Created.
    pub created_at: Timestamp,
    /// Last report.
    pub updated_at: Option<Timestamp>,
}

/// What an agent reports about its node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeReport {
    /// The placement provider's UUID.
    pub uuid: String,
    /// Host name.
    pub host: String,
    /// Hypervisor host name (usually the host).
    pub hypervisor_hostname: String,
    /// `mica`.
    pub hypervisor_type: String,
    /// Version number.
    pub hypervisor_version: i64,
    /// Address.
    pub host_ip: String,
    /// CPU description (JSON object text).
    pub cpu_info: String,
    /// vCPUs.
    pub vcpus: i64,
    /// RAM in MiB.
    pub memory_mb: i64,
    /// Disk in GiB.
    pub local_gb: i64,
    /// Running instances.
    pub running_vms: i64,
}

/// Creates or refreshes the node of `r.hypervisor_hostname`, linked to the
/// `nova-compute` service of its host if there is one.
pub async fn upsert_compute_node(conn: &mut AnyConnection, r: &NodeReport) -> Result<NodeRow> {
    let now = Timestamp::now();
    let service_id: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM compute_services WHERE host = $1 AND binary_name = 'nova-compute'",
    )
    .bind(&r.host)
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO compute_nodes (uuid, service_id, host, hypervisor_hostname, hypervisor_type, \
         hypervisor_version, host_ip, cpu_info, vcpus, memory_mb, local_gb, running_vms, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (hypervisor_hostname) DO UPDATE SET uuid = excluded.uuid, \
         service_id = excluded.service_id, host = excluded.host, \
         hypervisor_type = excluded.hypervisor_type, hypervisor_version = excluded.hypervisor_version, \
         host_ip = excluded.host_ip, cpu_info = excluded.cpu_info, vcpus = excluded.vcpus, \
         memory_mb = excluded.memory_mb, local_gb = excluded.local_gb, \
         running_vms = excluded.running_vms, updated_at = excluded.updated_at",
    )
    .bind(&r.uuid)
    .bind(service_id)
    .bind(&r.host)
    .bind(&r.hypervisor_hostname)
    .bind(&r.hypervisor_type)
    .bind(r.hypervisor_version)
    .bind(&r.host_ip)
    .bind(&r.cpu_info)
    .bind(r.vcpus)
    .bind(r.memory_mb)
    .bind(r.local_gb)
    .bind(r.running_vms)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(
        sqlx::query_as("SELECT * FROM compute_nodes WHERE hypervisor_hostname = $1")
            .bind(&r.hypervisor_hostname)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// Compute nodes by id, optionally those whose hypervisor host name
/// contains `pattern`, after id `after`, up to `limit`.
pub async fn list_nodes<'e>(
    ex: impl Executor<'e, Database = Any>,
    pattern: Option<&str>,
    after: Option<i64>,
    limit: Option<i64>,
) -> Result<Vec<NodeRow>> {
    let mut q = Sql::new("SELECT * FROM compute_nodes WHERE 1 = 1");
    if let Some(p) = pattern {
        q.push(" AND hypervisor_hostname LIKE ")
            .bind(format!("%{}%", like_escape(p)))
            .push(" ESCAPE '\\'");
    }
    if let Some(a) = after {
        q.push(" AND id > ").bind(a);
    }
    q.push(" ORDER BY id");
    if let Some(l) = limit {
        q.push(" LIMIT ").bind(l);
    }
    q.fetch_all(ex).await
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A node by integer id, UUID or hypervisor host name.
pub async fn get_node<'e>(
    ex: impl Executor<'e, Database = Any>,
    key: &str,
) -> Result<Option<NodeRow>> {
    let mut q = Sql::new("SELECT * FROM compute_nodes WHERE uuid = ");
    q.bind(key.to_owned())
        .push(" OR hypervisor_hostname = ")
        .bind(key.to_owned());
    if let Ok(n) = key.parse::<i64>() {
        q.push(" OR id = ").bind(n);
    }
    q.push(" ORDER BY id");
    Ok(q.fetch_all(ex).await?.into_iter().next())
}

/// The nodes of a host.
pub async fn nodes_of_host<'e>(
    ex: impl Executor<'e, Database = Any>,
    host: &str,
) -> Result<Vec<NodeRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM compute_nodes WHERE host = $1 ORDER BY id")
            .bind(host)
            .fetch_all(ex)
            .await?,
    )
}

/// Deletes the nodes of a host.
pub async fn delete_nodes_of_host<'e>(
    ex: impl Executor<'e, Database = Any>,
    host: &str,
) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM compute_nodes WHERE host = $1")
        .bind(host)
        .execute(ex)
        .await?
        .rows_affected())
}

// ---- aggregates ---------------------------------------------------------------------

/// An aggregate row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AggregateRow {
    /// Integer id.
    pub id: i64,
    /// UUID (2.41); also its placement aggregate.
    pub uuid: String,
    /// Unique name.
    pub name: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Option<Timestamp>,
}

/// An aggregate with its hosts and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The row.
    pub row: AggregateRow,
    /// Hosts, sorted.
    pub hosts: Vec<String>,
    /// Metadata (`availability_zone` among them).
    pub metadata: BTreeMap<String, String>,
}

impl Aggregate {
    /// Its availability zone, if it names one.
    pub fn availability_zone(&self) -> Option<&str> {
        self.metadata.get("availability_zone").map(String::as_str)
    }
}

/// Inserts an aggregate; returns its id.
pub async fn insert_aggregate<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    name: &str,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO aggregates (uuid, name, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(uuid)
    .bind(name)
    .bind(Timestamp::now())
    .fetch_one(ex)
    .await?)
}

/// Every aggregate with hosts and metadata, by id.
pub async fn list_aggregates(conn: &mut AnyConnection) -> Result<Vec<Aggregate>> {
    let rows: Vec<AggregateRow> = sqlx::query_as("SELECT * FROM aggregates ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    attach_aggregates(conn, rows).await
}

async fn attach_aggregates(
    conn: &mut AnyConnection,
    rows: Vec<AggregateRow>,
) -> Result<Vec<Aggregate>> {
    let hosts: Vec<(i64, String)> =
        sqlx::query_as("SELECT aggregate_id, host FROM aggregate_hosts ORDER BY host")
            .fetch_all(&mut *conn)
            .await?;
    let meta: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT aggregate_id, key, value FROM aggregate_metadata")
            .fetch_all(&mut *conn)
            .await?;
    let mut out: Vec<Aggregate> = rows
        .into_iter()
        .map(|row| Aggregate {
            row,
            hosts: vec![],
            metadata: BTreeMap::new(),
        })
        .collect();
    let index: BTreeMap<i64, usize> = out.iter().enumerate().map(|(i, a)| (a.row.id, i)).collect();
    for (id, h) in hosts {
        if let Some(&i) = index.get(&id) {
            out[i].hosts.push(h);
        }
    }
    for (id, k, v) in meta {
        if let Some(&i) = index.get(&id) {
            out[i].metadata.insert(k, v);
        }
    }
    Ok(out)
}

/// An aggregate by integer id or UUID.
pub async fn get_aggregate(conn: &mut AnyConnection, key: &str) -> Result<Option<Aggregate>> {
    let mut q = Sql::new("SELECT * FROM aggregates WHERE uuid = ");
    q.bind(key.to_owned());
    if let Ok(n) = key.parse::<i64>() {
        q.push(" OR id = ").bind(n);
    }
    let rows: Vec<AggregateRow> = q.fetch_all(&mut *conn).await?;
    Ok(attach_aggregates(conn, rows).await?.into_iter().next())
}

/// The aggregates a host is in.
pub async fn aggregates_of_host(conn: &mut AnyConnection, host: &str) -> Result<Vec<Aggregate>> {
    let rows: Vec<AggregateRow> = sqlx::query_as(
        "SELECT * FROM aggregates WHERE id IN (SELECT aggregate_id FROM aggregate_hosts WHERE host = $1) ORDER BY id",
    )
    .bind(host)
    .fetch_all(&mut *conn)
    .await?;
    attach_aggregates(conn, rows).await
}

/// Host → availability zone, for every host in an aggregate that names a
/// zone.
pub async fn host_zones<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<BTreeMap<String, String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT h.host, m.value FROM aggregate_hosts h JOIN aggregate_metadata m \
         ON m.aggregate_id = h.aggregate_id AND m.key = 'availability_zone' ORDER BY h.aggregate_id",
    )
    .fetch_all(ex)
    .await?;
    let mut out = BTreeMap::new();
    for (h, z) in rows {
        out.entry(h).or_insert(z);
    }
    Ok(out)
}

/// Renames an aggregate; false when it is gone.
pub async fn rename_aggregate<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: i64,
    name: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("UPDATE aggregates SET name = $1, updated_at = $2 WHERE id = $3")
            .bind(name)
            .bind(Timestamp::now())
            .bind(id)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Touches an aggregate's `updated_at`; false when it is gone.
pub async fn touch_aggregate<'e>(ex: impl Executor<'e, Database = Any>, id: i64) -> Result<bool> {
    Ok(
        sqlx::query("UPDATE aggregates SET updated_at = $1 WHERE id = $2")
            .bind(Timestamp::now())
            .bind(id)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Sets metadata keys (`None` values delete the key).
pub async fn set_aggregate_metadata(
    conn: &mut AnyConnection,
    id: i64,
    meta: &BTreeMap<String, Option<String>>,
) -> Result<()> {
    for (k, v) in meta {
        match v {
            Some(v) => {
                sqlx::query(
                    "INSERT INTO aggregate_metadata (aggregate_id, key, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (aggregate_id, key) DO UPDATE SET value = excluded.value",
                )
                .bind(id)
                .bind(k)
                .bind(v)
                .execute(&mut *conn)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM aggregate_metadata WHERE aggregate_id = $1 AND key = $2")
                    .bind(id)
                    .bind(k)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Adds a host (a duplicate is a 409 from the key).
pub async fn add_aggregate_host<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: i64,
    host: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO aggregate_hosts (aggregate_id, host) VALUES ($1, $2)")
        .bind(id)
        .bind(host)
        .execute(ex)
        .await?;
    Ok(())
}

/// Removes a host; false when it was not there.
pub async fn remove_aggregate_host<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: i64,
    host: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM aggregate_hosts WHERE aggregate_id = $1 AND host = $2")
            .bind(id)
            .bind(host)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Deletes an aggregate (hosts and metadata go with it); false when gone.
pub async fn delete_aggregate<'e>(ex: impl Executor<'e, Database = Any>, id: i64) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM aggregates WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}
