//! What the scheduler reads and writes: provider states for its host cache,
//! its checked claim, build-failure counts, and named locks.
//!
//! # The claim
//!
//! [`claim`] writes one instance's allocations on one provider in one
//! transaction, as a checked insert:
//!
//! 1. an instance that already holds allocations keeps them (a replayed
//!    claim changes nothing);
//! 2. for a server-group member, the group's row in `scheduler_locks` is
//!    locked and the policy re-checked against where the other members'
//!    allocations are, so that members claimed at once by several
//!    schedulers cannot break it;
//! 3. the provider's generation is bumped **only if it is still the one the
//!    scheduler saw** (one statement): anything that changed the provider
//!    since — another claim, new inventory — makes the claim fail as stale,
//!    and the scheduler retries with fresh data;
//! 4. the usage of every class is raised in one statement whose `WHERE`
//!    re-checks the unit rules and the capacity (`(total - reserved) ×
//!    allocation_ratio`): no view in memory is trusted;
//! 5. the consumer and its allocation rows are written.

use std::collections::BTreeMap;

use sqlx::{Any, AnyConnection, Executor};

use super::placement::Inventory;
use super::{Sql, Timestamp};
use crate::error::Result;

/// A provider as the host cache keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderState {
    /// UUID.
    pub uuid: String,
    /// Name (the host name for compute hosts).
    pub name: String,
    /// Generation the rest was read at.
    pub generation: i64,
    /// Inventories with usage.
    pub inventories: Vec<(Inventory, i64)>,
    /// Traits.
    pub traits: Vec<String>,
    /// Placement aggregates.
    pub aggregates: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct ProviderInventoryRow {
    uuid: String,
    name: String,
    generation: i64,
    resource_class: Option<String>,
    total: Option<i64>,
    reserved: Option<i64>,
    min_unit: Option<i64>,
    max_unit: Option<i64>,
    step_size: Option<i64>,
    allocation_ratio: Option<f64>,
    used: Option<i64>,
}

/// The providers changed at or after `since`: (uuid, generation).
pub async fn changed_providers<'e>(
    ex: impl Executor<'e, Database = Any>,
    since: Timestamp,
) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT uuid, generation FROM resource_providers \
         WHERE updated_at >= $1 AND parent_provider_uuid IS NULL",
    )
    .bind(since)
    .fetch_all(ex)
    .await?)
}

/// The root providers (every one, or those of `only`), each with its
/// generation and usage read in one statement, plus traits and aggregates.
pub async fn provider_states(
    conn: &mut AnyConnection,
    only: Option<&[String]>,
) -> Result<Vec<ProviderState>> {
    let mut q = Sql::new(
        "SELECT rp.uuid, rp.name, rp.generation, i.resource_class, i.total, i.reserved, \
         i.min_unit, i.max_unit, i.step_size, i.allocation_ratio, i.used \
         FROM resource_providers rp LEFT JOIN inventories i ON i.provider_uuid = rp.uuid \
         WHERE rp.parent_provider_uuid IS NULL",
    );
    if let Some(uuids) = only {
        q.push(" AND rp.uuid IN (")
            .bind_list(uuids.to_vec())
            .push(")");
    }
    q.push(" ORDER BY rp.uuid");
    let rows: Vec<ProviderInventoryRow> = q.fetch_all(&mut *conn).await?;
    let mut out: Vec<ProviderState> = Vec::new();
    for r in rows {
        if out.last().is_none_or(|p| p.uuid != r.uuid) {
            out.push(ProviderState {
                uuid: r.uuid.clone(),
                name: r.name.clone(),
                generation: r.generation,
                inventories: Vec::new(),
                traits: Vec::new(),
                aggregates: Vec::new(),
            });
        }
        let p = out.last_mut().expect("pushed above");
        if let (
            Some(rc),
            Some(total),
            Some(reserved),
            Some(min_unit),
            Some(max_unit),
            Some(step),
            Some(ratio),
            Some(used),
        ) = (
            r.resource_class,
            r.total,
            r.reserved,
            r.min_unit,
            r.max_unit,
            r.step_size,
            r.allocation_ratio,
            r.used,
        ) {
            p.inventories.push((
                Inventory {
                    resource_class: rc,
                    total,
                    reserved,
                    min_unit,
                    max_unit,
                    step_size: step,
                    allocation_ratio: ratio,
                },
                used,
            ));
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    let index: BTreeMap<String, usize> = out
        .iter()
        .enumerate()
        .map(|(n, p)| (p.uuid.clone(), n))
        .collect();
    let mut q = Sql::new("SELECT provider_uuid, trait FROM provider_traits");
    if let Some(uuids) = only {
        q.push(" WHERE provider_uuid IN (")
            .bind_list(uuids.to_vec())
            .push(")");
    }
    let traits: Vec<(String, String)> = q.fetch_all(&mut *conn).await?;
    for (p, t) in traits {
        if let Some(n) = index.get(&p) {
            out[*n].traits.push(t);
        }
    }
    let mut q = Sql::new("SELECT provider_uuid, aggregate_uuid FROM provider_aggregates");
    if let Some(uuids) = only {
        q.push(" WHERE provider_uuid IN (")
            .bind_list(uuids.to_vec())
            .push(")");
    }
    let aggs: Vec<(String, String)> = q.fetch_all(&mut *conn).await?;
    for (p, a) in aggs {
        if let Some(n) = index.get(&p) {
            out[*n].aggregates.push(a);
        }
    }
    Ok(out)
}

/// The provider holding `consumer`'s allocations, if any.
pub async fn allocation_provider<'e>(
    ex: impl Executor<'e, Database = Any>,
    consumer: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT provider_uuid FROM allocations WHERE consumer_uuid = $1 ORDER BY provider_uuid LIMIT 1",
    )
    .bind(consumer)
    .fetch_optional(ex)
    .await?)
}

/// The server-group check of a claim.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupGuard {
    /// The group's UUID.
    pub uuid: String,
    /// `affinity` or `anti-affinity` (soft policies are not checked).
    pub policy: String,
    /// Anti-affinity: members allowed per host.
    pub max_per_host: i64,
    /// The other members (instance UUIDs).
    pub members: Vec<String>,
}

/// One instance's claim on one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct HostClaim {
    /// The instance.
    pub consumer_uuid: String,
    /// Its project.
    pub project_id: String,
    /// Its user.
    pub user_id: String,
    /// The provider.
    pub provider_uuid: String,
    /// The generation the scheduler saw.
    pub generation: i64,
    /// Class → amount.
    pub resources: BTreeMap<String, i64>,
    /// Server-group policy to keep.
    pub group: Option<GroupGuard>,
}

/// How a claim went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Written; the provider is now at this generation.
    Claimed(i64),
    /// The instance already holds allocations on this provider.
    Existing(String),
    /// The provider changed since it was read (or is gone).
    Stale,
    /// The provider cannot hold it (capacity or unit rules).
    NoCapacity,
    /// The server group's policy forbids this provider.
    GroupPolicy,
}

/// Writes `c` (see the module docs) in `conn`'s transaction. On any outcome
/// but `Claimed`, the caller rolls back.
pub async fn claim(conn: &mut AnyConnection, c: &HostClaim) -> Result<ClaimOutcome> {
    if let Some(p) = allocation_provider(&mut *conn, &c.consumer_uuid).await? {
        return Ok(ClaimOutcome::Existing(p));
    }
    let now = Timestamp::now();
    if let Some(g) = &c.group
        && !g.members.is_empty()
        && (g.policy == "affinity" || g.policy == "anti-affinity")
    {
        lock_name(conn, &format!("group:{}", g.uuid)).await?;
        let mut q = Sql::new(
            "SELECT provider_uuid, COUNT(DISTINCT consumer_uuid) FROM allocations WHERE consumer_uuid IN (",
        );
        q.bind_list(g.members.clone())
            .push(") GROUP BY provider_uuid");
        let placed: Vec<(String, i64)> = q.fetch_all(&mut *conn).await?;
        let here = placed
            .iter()
            .find(|(p, _)| *p == c.provider_uuid)
            .map_or(0, |(_, n)| *n);
        let violates = if g.policy == "anti-affinity" {
            here >= g.max_per_host.max(1)
        } else {
            !placed.is_empty() && here == 0
        };
        if violates {
            return Ok(ClaimOutcome::GroupPolicy);
        }
    }
    let bumped: Option<i64> = sqlx::query_scalar(
        "UPDATE resource_providers SET generation = generation + 1, updated_at = $1 \
         WHERE uuid = $2 AND generation = $3 RETURNING generation",
    )
    .bind(now)
    .bind(&c.provider_uuid)
    .bind(c.generation)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(generation) = bumped else {
        return Ok(ClaimOutcome::Stale);
    };
    if !c.resources.is_empty() {
        // used += amount per class, only where the amount is allowed and fits.
        let amount = |q: &mut Sql| {
            q.push("CASE resource_class");
            for (rc, n) in &c.resources {
                q.push(" WHEN ").bind(rc.clone()).push(" THEN ").bind(*n);
            }
            q.push(" END");
        };
        let mut q = Sql::new("UPDATE inventories SET used = used + ");
        amount(&mut q);
        q.push(" WHERE provider_uuid = ")
            .bind(c.provider_uuid.clone())
            .push(" AND resource_class IN (")
            .bind_list(c.resources.keys().cloned())
            .push(") AND min_unit <= ");
        amount(&mut q);
        q.push(" AND max_unit >= ");
        amount(&mut q);
        q.push(" AND (");
        amount(&mut q);
        q.push(") % step_size = 0 AND (total - reserved) * allocation_ratio >= used + ");
        amount(&mut q);
        let updated = q.execute(&mut *conn).await?;
        if updated != c.resources.len() as u64 {
            return Ok(ClaimOutcome::NoCapacity);
        }
    }
    sqlx::query(
        "INSERT INTO consumers (uuid, project_id, user_id, generation, created_at, updated_at) \
         VALUES ($1, $2, $3, 1, $4, $4) ON CONFLICT (uuid) DO UPDATE SET \
         generation = consumers.generation + 1, updated_at = excluded.updated_at",
    )
    .bind(&c.consumer_uuid)
    .bind(&c.project_id)
    .bind(&c.user_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if !c.resources.is_empty() {
        let mut q = Sql::new(
            "INSERT INTO allocations (consumer_uuid, provider_uuid, resource_class, used, created_at) VALUES ",
        );
        for (n, (rc, amount)) in c.resources.iter().enumerate() {
            if n > 0 {
                q.push(", ");
            }
            q.push("(")
                .bind(c.consumer_uuid.clone())
                .push(", ")
                .bind(c.provider_uuid.clone())
                .push(", ")
                .bind(rc.clone())
                .push(", ")
                .bind(*amount)
                .push(", ")
                .bind(now)
                .push(")");
        }
        q.execute(&mut *conn).await?;
    }
    Ok(ClaimOutcome::Claimed(generation))
}

/// Locks the named row of `scheduler_locks` for the rest of the transaction.
pub async fn lock_name(conn: &mut AnyConnection, name: &str) -> Result<()> {
    sqlx::query("INSERT INTO scheduler_locks (name, generation) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE scheduler_locks SET generation = generation + 1 WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// ---- build failures -------------------------------------------------------------

/// Counts one more failed build on `host`.
pub async fn add_failed_build<'e>(ex: impl Executor<'e, Database = Any>, host: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO scheduler_host_stats (host, failed_builds, updated_at) VALUES ($1, 1, $2) \
         ON CONFLICT (host) DO UPDATE SET failed_builds = scheduler_host_stats.failed_builds + 1, \
         updated_at = excluded.updated_at",
    )
    .bind(host)
    .bind(Timestamp::now())
    .execute(ex)
    .await?;
    Ok(())
}

/// Forgets the failed builds of `host` (it built one).
pub async fn reset_failed_builds<'e>(
    ex: impl Executor<'e, Database = Any>,
    host: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE scheduler_host_stats SET failed_builds = 0, updated_at = $1 \
         WHERE host = $2 AND failed_builds <> 0",
    )
    .bind(Timestamp::now())
    .bind(host)
    .execute(ex)
    .await?;
    Ok(())
}

/// Failed builds per host (hosts with none are absent).
pub async fn failed_builds<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT host, failed_builds FROM scheduler_host_stats WHERE failed_builds > 0",
    )
    .fetch_all(ex)
    .await?)
}

// ---- host information -------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct ServiceRow {
    host: String,
    #[sqlx(try_from = "super::Flag")]
    disabled: bool,
    #[sqlx(try_from = "super::Flag")]
    forced_down: bool,
    created_at: Timestamp,
    updated_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
struct NodeRow {
    host: String,
    hypervisor_type: String,
    hypervisor_version: i64,
    host_ip: String,
    cpu_info: String,
}

/// What the compute API's tables say of every host: services (with their
/// last heartbeat), hypervisors, aggregates with metadata, instance counts,
/// and the scheduler's build-failure counts.
pub async fn host_infos(
    conn: &mut AnyConnection,
) -> Result<std::collections::HashMap<String, crate::scheduler::cache::HostInfo>> {
    use crate::scheduler::host_state::{HostAggregate, Hypervisor, ServiceInfo};
    let mut out: std::collections::HashMap<String, crate::scheduler::cache::HostInfo> =
        Default::default();
    let services: Vec<ServiceRow> = sqlx::query_as(
        "SELECT host, disabled, forced_down, created_at, updated_at FROM compute_services \
         WHERE binary_name = 'nova-compute'",
    )
    .fetch_all(&mut *conn)
    .await?;
    for s in services {
        out.entry(s.host).or_default().service = Some(ServiceInfo {
            disabled: s.disabled,
            forced_down: s.forced_down,
            last_seen: Some(s.updated_at.unwrap_or(s.created_at)),
        });
    }
    let nodes: Vec<NodeRow> = sqlx::query_as(
        "SELECT host, hypervisor_type, hypervisor_version, host_ip, cpu_info FROM compute_nodes",
    )
    .fetch_all(&mut *conn)
    .await?;
    for n in nodes {
        let model = serde_json::from_str::<serde_json::Value>(&n.cpu_info)
            .ok()
            .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_default();
        out.entry(n.host).or_default().hypervisor = Hypervisor {
            hypervisor_type: n.hypervisor_type,
            hypervisor_version: u64::try_from(n.hypervisor_version).unwrap_or(0),
            cpu_model: model,
            host_ip: n.host_ip,
        };
    }
    let members: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.uuid, a.name, h.host FROM aggregates a JOIN aggregate_hosts h ON h.aggregate_id = a.id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let metadata: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.uuid, m.key, m.value FROM aggregates a JOIN aggregate_metadata m ON m.aggregate_id = a.id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut meta: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (a, k, v) in metadata {
        meta.entry(a).or_default().insert(k, v);
    }
    for (uuid, name, host) in members {
        let metadata = meta.get(&uuid).cloned().unwrap_or_default();
        out.entry(host).or_default().aggregates.push(HostAggregate {
            uuid,
            name,
            metadata,
        });
    }
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT host, COUNT(*) FROM instances WHERE deleted = FALSE AND host IS NOT NULL GROUP BY host",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (host, n) in counts {
        out.entry(host).or_default().num_instances = u32::try_from(n).unwrap_or(u32::MAX);
    }
    for (host, n) in failed_builds(&mut *conn).await? {
        out.entry(host).or_default().failed_builds = u32::try_from(n).unwrap_or(u32::MAX);
    }
    Ok(out)
}

/// Where the instances among `members` hold allocations: (instance, host
/// name of the provider).
pub async fn member_placements<'e>(
    ex: impl Executor<'e, Database = Any>,
    members: &[String],
) -> Result<Vec<(String, String)>> {
    if members.is_empty() {
        return Ok(vec![]);
    }
    let mut q = Sql::new(
        "SELECT DISTINCT a.consumer_uuid, rp.name FROM allocations a \
         JOIN resource_providers rp ON rp.uuid = a.provider_uuid WHERE a.consumer_uuid IN (",
    );
    q.bind_list(members.to_vec()).push(")");
    q.fetch_all(ex).await
}
