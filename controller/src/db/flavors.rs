//! Flavor tables: flavors, their extra specs and access lists; and key pairs.

use std::collections::BTreeMap;

use sqlx::{Any, AnyConnection, Executor};

use super::{Sql, Timestamp};
use crate::error::Result;

/// A flavor row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FlavorRow {
    /// Public id (Nova's flavorid).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// RAM in MiB.
    pub memory_mb: i64,
    /// vCPUs.
    pub vcpus: i64,
    /// Root disk in GiB.
    pub root_gb: i64,
    /// Ephemeral disk in GiB.
    pub ephemeral_gb: i64,
    /// Swap in MiB.
    pub swap_mb: i64,
    /// RX/TX factor.
    pub rxtx_factor: f64,
    /// Usable by every project.
    #[sqlx(try_from = "super::Flag")]
    pub is_public: bool,
    /// Hidden from new servers.
    #[sqlx(try_from = "super::Flag")]
    pub disabled: bool,
    /// Description (2.55).
    pub description: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Option<Timestamp>,
}

/// A flavor with its extra specs.
#[derive(Debug, Clone, PartialEq)]
pub struct Flavor {
    /// The row.
    pub row: FlavorRow,
    /// Extra specs.
    pub extra_specs: BTreeMap<String, String>,
}

/// Inserts a flavor with its extra specs.
pub async fn insert_flavor(conn: &mut AnyConnection, f: &Flavor) -> Result<()> {
    let r = &f.row;
    sqlx::query(
        "INSERT INTO flavors (id, name, memory_mb, vcpus, root_gb, ephemeral_gb, swap_mb, \
         rxtx_factor, is_public, disabled, description, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&r.id)
    .bind(&r.name)
    .bind(r.memory_mb)
    .bind(r.vcpus)
    .bind(r.root_gb)
    .bind(r.ephemeral_gb)
    .bind(r.swap_mb)
    .bind(r.rxtx_factor)
    .bind(r.is_public)
    .bind(r.disabled)
    .bind(&r.description)
    .bind(r.created_at)
    .bind(r.updated_at.map(|t| t.to_db()))
    .execute(&mut *conn)
    .await?;
    set_extra_specs(conn, &r.id, &f.extra_specs).await
}

/// A flavor by id, with extra specs.
pub async fn get_flavor(conn: &mut AnyConnection, id: &str) -> Result<Option<Flavor>> {
    let row: Option<FlavorRow> = sqlx::query_as("SELECT * FROM flavors WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let extra_specs = extra_specs(&mut *conn, id).await?;
    Ok(Some(Flavor { row, extra_specs }))
}

/// A flavor listing.
#[derive(Debug, Clone, Default)]
pub struct FlavorQuery {
    /// `Some(true)`: public ones; `Some(false)`: private ones; `None`: both.
    pub is_public: Option<bool>,
    /// Restrict private flavors to those this project may use (non-admins).
    pub project_id: Option<String>,
    /// At least this much RAM.
    pub min_ram: Option<i64>,
    /// At least this much disk.
    pub min_disk: Option<i64>,
    /// Sort key column (validated by the caller) and ascending.
    pub sort: (String, bool),
    /// Start after this flavor.
    pub marker: Option<FlavorRow>,
    /// Page size.
    pub limit: Option<i64>,
}

/// One page of flavors with extra specs.
pub async fn list_flavors(conn: &mut AnyConnection, q: &FlavorQuery) -> Result<Vec<Flavor>> {
    let mut s = Sql::new("SELECT * FROM flavors WHERE disabled = FALSE");
    match (q.is_public, &q.project_id) {
        (Some(true), _) => {
            s.push(" AND is_public = TRUE");
        }
        (Some(false), Some(p)) => {
            s.push(" AND is_public = FALSE AND id IN (SELECT flavor_id FROM flavor_projects WHERE project_id = ")
                .bind(p.clone())
                .push(")");
        }
        (Some(false), None) => {
            s.push(" AND is_public = FALSE");
        }
        (None, Some(p)) => {
            s.push(" AND (is_public = TRUE OR id IN (SELECT flavor_id FROM flavor_projects WHERE project_id = ")
                .bind(p.clone())
                .push("))");
        }
        (None, None) => {}
    }
    if let Some(r) = q.min_ram {
        s.push(" AND memory_mb >= ").bind(r);
    }
    if let Some(d) = q.min_disk {
        s.push(" AND root_gb >= ").bind(d);
    }
    let (col, asc) = (&q.sort.0, q.sort.1);
    let numeric = matches!(
        col.as_str(),
        "memory_mb" | "vcpus" | "root_gb" | "ephemeral_gb" | "swap_mb" | "rxtx_factor"
    );
    if let Some(m) = &q.marker {
        let op = if asc { ">" } else { "<" };
        s.push(" AND (");
        if numeric {
            let v = match col.as_str() {
                "memory_mb" => m.memory_mb as f64,
                "vcpus" => m.vcpus as f64,
                "root_gb" => m.root_gb as f64,
                "ephemeral_gb" => m.ephemeral_gb as f64,
                "swap_mb" => m.swap_mb as f64,
                _ => m.rxtx_factor,
            };
            s.push(col)
                .push(format!(" {op} "))
                .bind(v)
                .push(" OR (")
                .push(col)
                .push(" = ")
                .bind(v);
        } else {
            let v = match col.as_str() {
                "name" => m.name.clone(),
                "created_at" => m.created_at.to_db(),
                "description" => m.description.clone().unwrap_or_default(),
                _ => m.id.clone(),
            };
            let expr = format!("COALESCE({col}, '')");
            s.push(&expr)
                .push(format!(" {op} "))
                .bind(v.clone())
                .push(" OR (")
                .push(&expr)
                .push(" = ")
                .bind(v);
        }
        s.push(format!(" AND id {op} "))
            .bind(m.id.clone())
            .push("))");
    }
    let dir = if asc { "ASC" } else { "DESC" };
    if numeric {
        s.push(format!(" ORDER BY {col} {dir}, id {dir}"));
    } else {
        s.push(format!(" ORDER BY COALESCE({col}, '') {dir}, id {dir}"));
    }
    if let Some(l) = q.limit {
        s.push(" LIMIT ").bind(l);
    }
    let rows: Vec<FlavorRow> = s.fetch_all(&mut *conn).await?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut specs = extra_specs_of(&mut *conn, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let extra_specs = specs.remove(&row.id).unwrap_or_default();
            Flavor { row, extra_specs }
        })
        .collect())
}

/// Every flavor row whose name is `name` (0 or 1).
pub async fn find_by_name<'e>(
    ex: impl Executor<'e, Database = Any>,
    name: &str,
) -> Result<Option<FlavorRow>> {
    Ok(sqlx::query_as("SELECT * FROM flavors WHERE name = $1")
        .bind(name)
        .fetch_optional(ex)
        .await?)
}

/// Sets a flavor's description; false when it is gone.
pub async fn set_description<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    description: Option<&str>,
) -> Result<bool> {
    Ok(
        sqlx::query("UPDATE flavors SET description = $1, updated_at = $2 WHERE id = $3")
            .bind(description)
            .bind(Timestamp::now())
            .bind(id)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Deletes a flavor (specs and access go with it); false when it is gone.
pub async fn delete_flavor<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM flavors WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// A flavor's extra specs.
pub async fn extra_specs<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<BTreeMap<String, String>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT key, value FROM flavor_extra_specs WHERE flavor_id = $1")
            .bind(id)
            .fetch_all(ex)
            .await?;
    Ok(rows.into_iter().collect())
}

async fn extra_specs_of(
    conn: &mut AnyConnection,
    ids: &[String],
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut q =
        Sql::new("SELECT flavor_id, key, value FROM flavor_extra_specs WHERE flavor_id IN (");
    q.bind_list(ids.to_vec()).push(")");
    let rows: Vec<(String, String, String)> = q.fetch_all(&mut *conn).await?;
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (f, k, v) in rows {
        out.entry(f).or_default().insert(k, v);
    }
    Ok(out)
}

/// Sets (adds or replaces) extra specs, keeping the others.
pub async fn set_extra_specs(
    conn: &mut AnyConnection,
    id: &str,
    specs: &BTreeMap<String, String>,
) -> Result<()> {
    for (k, v) in specs {
        sqlx::query(
            "INSERT INTO flavor_extra_specs (flavor_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (flavor_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(id)
        .bind(k)
        .bind(v)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Removes one extra spec; false when there was none.
pub async fn delete_extra_spec<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    key: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM flavor_extra_specs WHERE flavor_id = $1 AND key = $2")
            .bind(id)
            .bind(key)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// The projects that may use a private flavor.
pub async fn access_list<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT project_id FROM flavor_projects WHERE flavor_id = $1 ORDER BY project_id",
    )
    .bind(id)
    .fetch_all(ex)
    .await?)
}

/// Whether `project_id` may use private flavor `id`.
pub async fn has_access<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    project_id: &str,
) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM flavor_projects WHERE flavor_id = $1 AND project_id = $2",
    )
    .bind(id)
    .bind(project_id)
    .fetch_one(ex)
    .await?;
    Ok(n > 0)
}

/// Grants a project access (a duplicate is a 409 from the constraint).
pub async fn add_access<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    project_id: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO flavor_projects (flavor_id, project_id) VALUES ($1, $2)")
        .bind(id)
        .bind(project_id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Revokes a project's access; false when it had none.
pub async fn remove_access<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    project_id: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM flavor_projects WHERE flavor_id = $1 AND project_id = $2")
            .bind(id)
            .bind(project_id)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

// ---- key pairs -------------------------------------------------------------------

/// A key pair.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct KeyPair {
    /// Row id.
    pub id: i64,
    /// Owner.
    pub user_id: String,
    /// Name, unique per user.
    pub name: String,
    /// `ssh` or `x509`.
    #[sqlx(rename = "type")]
    pub kind: String,
    /// `aa:bb:…` (MD5 for ssh, SHA-1 for x509).
    pub fingerprint: String,
    /// The public key.
    pub public_key: String,
    /// Created.
    pub created_at: Timestamp,
}

/// Inserts a key pair (a duplicate name is a 409 from the constraint);
/// returns its id.
pub async fn insert_key_pair<'e>(
    ex: impl Executor<'e, Database = Any>,
    k: &KeyPair,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO key_pairs (user_id, name, type, fingerprint, public_key, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(&k.user_id)
    .bind(&k.name)
    .bind(&k.kind)
    .bind(&k.fingerprint)
    .bind(&k.public_key)
    .bind(k.created_at)
    .fetch_one(ex)
    .await?)
}

/// A user's key pair by name.
pub async fn get_key_pair<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
    name: &str,
) -> Result<Option<KeyPair>> {
    Ok(
        sqlx::query_as("SELECT * FROM key_pairs WHERE user_id = $1 AND name = $2")
            .bind(user_id)
            .bind(name)
            .fetch_optional(ex)
            .await?,
    )
}

/// A user's key pairs by name, after `marker` (a name), up to `limit`.
pub async fn list_key_pairs<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
    marker: Option<&str>,
    limit: Option<i64>,
) -> Result<Vec<KeyPair>> {
    let mut q = Sql::new("SELECT * FROM key_pairs WHERE user_id = ");
    q.bind(user_id.to_owned());
    if let Some(m) = marker {
        q.push(" AND name > ").bind(m.to_owned());
    }
    q.push(" ORDER BY name");
    if let Some(l) = limit {
        q.push(" LIMIT ").bind(l);
    }
    q.fetch_all(ex).await
}

/// How many key pairs a user has.
pub async fn count_key_pairs<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM key_pairs WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(ex)
            .await?,
    )
}

/// Deletes a key pair; false when there was none.
pub async fn delete_key_pair<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
    name: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM key_pairs WHERE user_id = $1 AND name = $2")
            .bind(user_id)
            .bind(name)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}
