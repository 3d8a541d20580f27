//! Quota tables: limits per project and per user, quota classes (the
//! `default` class overrides the configured defaults), the per-project
//! quota lock, and usage counted from the tables themselves.
//!
//! There is no usage table to drift: a quota check counts live rows
//! ([`instance_usage`], [`crate::db::flavors::count_key_pairs`],
//! [`crate::db::server_groups::count_groups`]) after taking the project's
//! lock ([`lock_project`]) in the same transaction that inserts, so two
//! requests of one project are checked one after the other and can never
//! exceed a limit together.

use std::collections::BTreeMap;

use sqlx::{Any, AnyConnection, Executor};

use super::Timestamp;
use crate::error::Result;

/// Limits set for a project (`user_id` `None`) or a user in it.
pub async fn limits<'e>(
    ex: impl Executor<'e, Database = Any>,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT resource, hard_limit FROM quotas WHERE project_id = $1 AND user_id = $2",
    )
    .bind(project_id)
    .bind(user_id.unwrap_or(""))
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Sets one limit of a project (`user_id` `None`) or a user.
pub async fn set_limit<'e>(
    ex: impl Executor<'e, Database = Any>,
    project_id: &str,
    user_id: Option<&str>,
    resource: &str,
    hard_limit: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO quotas (project_id, user_id, resource, hard_limit, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project_id, user_id, resource) \
         DO UPDATE SET hard_limit = excluded.hard_limit, updated_at = excluded.updated_at",
    )
    .bind(project_id)
    .bind(user_id.unwrap_or(""))
    .bind(resource)
    .bind(hard_limit)
    .bind(Timestamp::now())
    .execute(ex)
    .await?;
    Ok(())
}

/// Network quotas are rows of the same table, their resources prefixed so.
pub const NETWORK_PREFIX: &str = "network:";

/// Which service's limits [`delete_limits`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaService {
    Compute,
    Network,
}

/// Removes one service's limits of a project (and every user in it) or of
/// one user: they fall back to the defaults. The other service's stay.
pub async fn delete_limits<'e>(
    ex: impl Executor<'e, Database = Any>,
    service: QuotaService,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<u64> {
    let pattern = format!("{NETWORK_PREFIX}%");
    let which = match service {
        QuotaService::Compute => "NOT LIKE",
        QuotaService::Network => "LIKE",
    };
    let sql = match user_id {
        Some(_) => format!(
            "DELETE FROM quotas WHERE project_id = $1 AND resource {which} $2 AND user_id = $3"
        ),
        None => format!("DELETE FROM quotas WHERE project_id = $1 AND resource {which} $2"),
    };
    let mut q = sqlx::query(&sql).bind(project_id).bind(pattern);
    if let Some(u) = user_id {
        q = q.bind(u);
    }
    Ok(q.execute(ex).await?.rows_affected())
}

/// The highest per-user limit of `resource` set in a project (to refuse a
/// project limit below it).
pub async fn max_user_limit<'e>(
    ex: impl Executor<'e, Database = Any>,
    project_id: &str,
    resource: &str,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT MAX(hard_limit) FROM quotas WHERE project_id = $1 AND user_id <> '' AND resource = $2",
    )
    .bind(project_id)
    .bind(resource)
    .fetch_one(ex)
    .await?)
}

/// Limits of a quota class (`default`).
pub async fn class_limits<'e>(
    ex: impl Executor<'e, Database = Any>,
    class_name: &str,
) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT resource, hard_limit FROM quota_classes WHERE class_name = $1")
            .bind(class_name)
            .fetch_all(ex)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Sets one limit of a quota class.
pub async fn set_class_limit<'e>(
    ex: impl Executor<'e, Database = Any>,
    class_name: &str,
    resource: &str,
    hard_limit: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO quota_classes (class_name, resource, hard_limit, updated_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (class_name, resource) \
         DO UPDATE SET hard_limit = excluded.hard_limit, updated_at = excluded.updated_at",
    )
    .bind(class_name)
    .bind(resource)
    .bind(hard_limit)
    .bind(Timestamp::now())
    .execute(ex)
    .await?;
    Ok(())
}

/// Takes the project's quota lock until the transaction ends (a generation
/// bump on its `quota_locks` row, created on first use).
pub async fn lock_project(conn: &mut AnyConnection, project_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO quota_locks (project_id, generation) VALUES ($1, 1) \
         ON CONFLICT (project_id) DO UPDATE SET generation = quota_locks.generation + 1",
    )
    .bind(project_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Live instances, cores and RAM of a project (or one user in it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceUsage {
    /// Instances.
    pub instances: i64,
    /// vCPUs.
    pub cores: i64,
    /// RAM in MiB.
    pub ram: i64,
}

/// Counts the live instances of a project (or of one user in it).
pub async fn instance_usage<'e>(
    ex: impl Executor<'e, Database = Any>,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<InstanceUsage> {
    let sql = "SELECT COUNT(*), CAST(COALESCE(SUM(vcpus), 0) AS BIGINT), \
               CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) FROM instances \
               WHERE project_id = $1 AND deleted = FALSE";
    let row: (i64, i64, i64) = match user_id {
        Some(u) => {
            sqlx::query_as(&format!("{sql} AND user_id = $2"))
                .bind(project_id)
                .bind(u)
                .fetch_one(ex)
                .await?
        }
        None => sqlx::query_as(sql).bind(project_id).fetch_one(ex).await?,
    };
    Ok(InstanceUsage {
        instances: row.0,
        cores: row.1,
        ram: row.2,
    })
}
