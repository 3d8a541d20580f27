//! Server groups and their members.
//!
//! The scheduler reads a group's policy ([`group_of_instance`]) and its
//! members' placements; the compute API adds members at
//! create time (with the `server_group_members` quota checked under the
//! project's quota lock) and membership ends when an instance is deleted.

use sqlx::{Any, AnyConnection, Executor};

use super::{Sql, Timestamp};
use crate::error::Result;

/// A server group.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct GroupRow {
    /// Integer id (internal).
    pub id: i64,
    /// UUID (the public id).
    pub uuid: String,
    /// Owning project.
    pub project_id: String,
    /// Creator.
    pub user_id: String,
    /// Name.
    pub name: String,
    /// `affinity`, `anti-affinity`, `soft-affinity`, `soft-anti-affinity`.
    pub policy: String,
    /// Rules (JSON object: `{"max_server_per_host": N}`).
    pub rules: String,
    /// Created.
    pub created_at: Timestamp,
}

/// A group with its member instance uuids.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The row.
    pub row: GroupRow,
    /// Live member instances.
    pub members: Vec<String>,
}

impl GroupRow {
    /// `max_server_per_host` from the rules, if set.
    pub fn max_server_per_host(&self) -> Option<i64> {
        serde_json::from_str::<serde_json::Value>(&self.rules)
            .ok()?
            .get("max_server_per_host")?
            .as_i64()
    }
}

/// Inserts a group; returns its integer id.
pub async fn insert_group<'e>(ex: impl Executor<'e, Database = Any>, g: &GroupRow) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO server_groups (uuid, project_id, user_id, name, policy, rules, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&g.uuid)
    .bind(&g.project_id)
    .bind(&g.user_id)
    .bind(&g.name)
    .bind(&g.policy)
    .bind(&g.rules)
    .bind(g.created_at)
    .fetch_one(ex)
    .await?)
}

async fn attach(conn: &mut AnyConnection, rows: Vec<GroupRow>) -> Result<Vec<Group>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut q = Sql::new(
        "SELECT m.group_id, m.instance_uuid FROM server_group_members m \
         JOIN instances i ON i.uuid = m.instance_uuid AND i.deleted = FALSE WHERE m.group_id IN (",
    );
    q.bind_list(ids)
        .push(") ORDER BY i.created_at, m.instance_uuid");
    let members: Vec<(i64, String)> = q.fetch_all(&mut *conn).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let members = members
                .iter()
                .filter(|(g, _)| *g == row.id)
                .map(|(_, u)| u.clone())
                .collect();
            Group { row, members }
        })
        .collect())
}

/// A group by UUID.
pub async fn get_group(conn: &mut AnyConnection, uuid: &str) -> Result<Option<Group>> {
    let rows: Vec<GroupRow> = sqlx::query_as("SELECT * FROM server_groups WHERE uuid = $1")
        .bind(uuid)
        .fetch_all(&mut *conn)
        .await?;
    Ok(attach(conn, rows).await?.into_iter().next())
}

/// Groups, of one project or all, by id, skipping `offset`, up to `limit`.
pub async fn list_groups(
    conn: &mut AnyConnection,
    project_id: Option<&str>,
    offset: i64,
    limit: Option<i64>,
) -> Result<Vec<Group>> {
    let mut q = Sql::new("SELECT * FROM server_groups WHERE 1 = 1");
    if let Some(p) = project_id {
        q.push(" AND project_id = ").bind(p.to_owned());
    }
    q.push(" ORDER BY id");
    if limit.is_some() || offset > 0 {
        q.push(" LIMIT ").bind(limit.unwrap_or(i64::MAX));
    }
    if offset > 0 {
        q.push(" OFFSET ").bind(offset);
    }
    let rows: Vec<GroupRow> = q.fetch_all(&mut *conn).await?;
    attach(conn, rows).await
}

/// How many groups a project (and optionally a user) has.
pub async fn count_groups<'e>(
    ex: impl Executor<'e, Database = Any>,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<i64> {
    let mut q = Sql::new("SELECT COUNT(*) AS n FROM server_groups WHERE project_id = ");
    q.bind(project_id.to_owned());
    if let Some(u) = user_id {
        q.push(" AND user_id = ").bind(u.to_owned());
    }
    let rows: Vec<(i64,)> = q.fetch_all(ex).await?;
    Ok(rows.first().map(|r| r.0).unwrap_or(0))
}

/// Deletes a group (members go with it); false when gone.
pub async fn delete_group<'e>(ex: impl Executor<'e, Database = Any>, uuid: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM server_groups WHERE uuid = $1")
        .bind(uuid)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// Adds an instance to a group.
pub async fn add_member<'e>(
    ex: impl Executor<'e, Database = Any>,
    group_id: i64,
    instance_uuid: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO server_group_members (group_id, instance_uuid) VALUES ($1, $2)")
        .bind(group_id)
        .bind(instance_uuid)
        .execute(ex)
        .await?;
    Ok(())
}

/// Live members of a group.
pub async fn count_members<'e>(
    ex: impl Executor<'e, Database = Any>,
    group_id: i64,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM server_group_members m JOIN instances i \
         ON i.uuid = m.instance_uuid AND i.deleted = FALSE WHERE m.group_id = $1",
    )
    .bind(group_id)
    .fetch_one(ex)
    .await?)
}

/// The group an instance is in, if any.
pub async fn group_of_instance(
    conn: &mut AnyConnection,
    instance_uuid: &str,
) -> Result<Option<Group>> {
    let rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT g.* FROM server_groups g JOIN server_group_members m ON m.group_id = g.id \
         WHERE m.instance_uuid = $1",
    )
    .bind(instance_uuid)
    .fetch_all(&mut *conn)
    .await?;
    Ok(attach(conn, rows).await?.into_iter().next())
}

/// The group (uuid) of each of `instance_uuids` that is in one.
pub async fn groups_of_instances<'e>(
    ex: impl Executor<'e, Database = Any>,
    instance_uuids: &[String],
) -> Result<Vec<(String, String)>> {
    let mut q = Sql::new(
        "SELECT m.instance_uuid, g.uuid FROM server_group_members m \
         JOIN server_groups g ON g.id = m.group_id WHERE m.instance_uuid IN (",
    );
    q.bind_list(instance_uuids.to_vec()).push(")");
    q.fetch_all(ex).await
}
