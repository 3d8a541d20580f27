//! Placement tables: resource providers, inventories, custom resource classes
//! and traits, provider traits and aggregates, consumers and allocations.
//!
//! What the placement API (and the conductor, without HTTP) calls:
//!
//! - [`allocation_candidates`] lists the providers that can hold a request,
//!   each with its generation, inventories, usages and traits;
//! - [`write_allocations`] claims (or replaces, or frees) the allocations of
//!   one or more consumers in one transaction. It is a checked write: each
//!   provider involved is locked by bumping its generation (optionally only
//!   if it still has the generation the caller saw), then capacity is
//!   checked against committed usage and the rows are inserted. Two claims
//!   can never both take the last unit. A claim that loses a race returns
//!   409 with code `placement.concurrent_update` (retry with fresh
//!   candidates) or 409 for capacity; lock-level losses (deadlock, busy) are
//!   retried by [`crate::db::Db::retry`] in the app layer.
//!
//! Every function that changes a provider (inventories, traits, aggregates,
//! allocations) bumps its generation in the same transaction.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Any, AnyConnection, Executor};

use super::{Sql, Timestamp};
use crate::error::{Error, Result};

/// The largest integer placement accepts in inventories and allocations.
pub const MAX_INT: i64 = 2147483647;

/// Error code: a generation did not match.
pub const CONCURRENT_UPDATE: &str = "placement.concurrent_update";
/// Error code: a provider name is taken.
pub const DUPLICATE_NAME: &str = "placement.duplicate_name";
/// Error code: inventory in use.
pub const INVENTORY_INUSE: &str = "placement.inventory.inuse";
/// Error code: provider has allocations.
pub const PROVIDER_INUSE: &str = "placement.resource_provider.inuse";
/// Error code: provider has children.
pub const CANNOT_DELETE_PARENT: &str = "placement.resource_provider.cannot_delete_parent";
/// Error code: provider not found.
pub const PROVIDER_NOT_FOUND: &str = "placement.resource_provider.not_found";
/// Error code: anything else.
pub const UNDEFINED: &str = "placement.undefined_code";

/// A resource provider.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Provider {
    /// UUID.
    pub uuid: String,
    /// Unique name.
    pub name: String,
    /// Bumped by every change to the provider or what it holds.
    pub generation: i64,
    /// Parent in a provider tree.
    pub parent_provider_uuid: Option<String>,
    /// Root of its tree (itself when it has no parent).
    pub root_provider_uuid: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// An inventory of one resource class on a provider.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Inventory {
    /// Resource class.
    pub resource_class: String,
    /// Total amount.
    pub total: i64,
    /// Amount not available to allocations.
    pub reserved: i64,
    /// Smallest allocation.
    pub min_unit: i64,
    /// Largest allocation.
    pub max_unit: i64,
    /// Allocations are multiples of this.
    pub step_size: i64,
    /// Overcommit factor.
    pub allocation_ratio: f64,
}

impl Inventory {
    /// What allocations may add up to: `floor((total - reserved) * ratio)`.
    pub fn capacity(&self) -> i64 {
        ((self.total - self.reserved) as f64 * self.allocation_ratio).floor() as i64
    }

    /// Whether one allocation of `amount` fits the unit constraints.
    pub fn accepts_amount(&self, amount: i64) -> bool {
        amount >= self.min_unit
            && amount <= self.max_unit
            && self.step_size > 0
            && amount % self.step_size == 0
    }
}

/// An inventory with its provider and usage.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct ProviderInventory {
    provider_uuid: String,
    #[sqlx(flatten)]
    inventory: Inventory,
    used: i64,
}

/// One allocation row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Allocation {
    /// The consumer.
    pub consumer_uuid: String,
    /// The provider.
    pub provider_uuid: String,
    /// Resource class.
    pub resource_class: String,
    /// Amount.
    pub used: i64,
}

/// A consumer of resources (an instance, a migration, …).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Consumer {
    /// UUID.
    pub uuid: String,
    /// Project.
    pub project_id: String,
    /// User.
    pub user_id: String,
    /// Bumped by every change to its allocations.
    pub generation: i64,
    /// Last changed.
    pub updated_at: Timestamp,
}

fn concurrent(what: impl std::fmt::Display) -> Error {
    Error::conflict(format!(
        "resource provider generation conflict: {what} changed since it was read; read it again and retry."
    ))
    .with_code(CONCURRENT_UPDATE)
}

// ---- providers -----------------------------------------------------------------

/// Inserts a provider.
pub async fn create_provider<'e>(
    ex: impl Executor<'e, Database = Any>,
    p: &Provider,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO resource_providers (uuid, name, generation, parent_provider_uuid, \
         root_provider_uuid, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&p.uuid)
    .bind(&p.name)
    .bind(p.generation)
    .bind(&p.parent_provider_uuid)
    .bind(&p.root_provider_uuid)
    .bind(p.created_at)
    .bind(p.updated_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// A provider by UUID.
pub async fn get_provider<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
) -> Result<Option<Provider>> {
    Ok(
        sqlx::query_as("SELECT * FROM resource_providers WHERE uuid = $1")
            .bind(uuid)
            .fetch_optional(ex)
            .await?,
    )
}

/// A provider by name.
pub async fn find_provider<'e>(
    ex: impl Executor<'e, Database = Any>,
    name: &str,
) -> Result<Option<Provider>> {
    Ok(
        sqlx::query_as("SELECT * FROM resource_providers WHERE name = $1")
            .bind(name)
            .fetch_optional(ex)
            .await?,
    )
}

/// Filters for providers; also the request of [`allocation_candidates`].
#[derive(Debug, Clone, Default)]
pub struct ProviderFilter {
    /// Exact name.
    pub name: Option<String>,
    /// Exact UUID.
    pub uuid: Option<String>,
    /// Each inner list: member of at least one of these aggregates.
    pub member_of: Vec<Vec<String>>,
    /// Capacity for each `(resource class, amount)`.
    pub resources: Vec<(String, i64)>,
    /// In the tree of this root provider.
    pub in_tree_root: Option<String>,
    /// Has every one of these traits.
    pub required: Vec<String>,
    /// Has none of these traits.
    pub forbidden: Vec<String>,
    /// At most this many.
    pub limit: Option<i64>,
}

fn push_filter(q: &mut Sql, f: &ProviderFilter) {
    if let Some(n) = &f.name {
        q.push(" AND rp.name = ").bind(n.clone());
    }
    if let Some(u) = &f.uuid {
        q.push(" AND rp.uuid = ").bind(u.clone());
    }
    if let Some(r) = &f.in_tree_root {
        q.push(" AND rp.root_provider_uuid = ").bind(r.clone());
    }
    for group in &f.member_of {
        q.push(" AND EXISTS (SELECT 1 FROM provider_aggregates pa WHERE pa.provider_uuid = rp.uuid AND pa.aggregate_uuid IN (")
            .bind_list(group.clone())
            .push("))");
    }
    if !f.resources.is_empty() {
        // The providers with, for every requested class, an inventory whose
        // unit rules accept the amount and whose free capacity holds it: one
        // pass over the inventories of the requested classes, with usage
        // from the `used` column that allocation writes keep in step.
        // Comparing the float capacity with an integer is the same as
        // comparing its floor.
        q.push(" AND rp.uuid IN (SELECT i.provider_uuid FROM inventories i WHERE ");
        for (n, (rc, amount)) in f.resources.iter().enumerate() {
            if n > 0 {
                q.push(" OR ");
            }
            q.push("(i.resource_class = ")
                .bind(rc.clone())
                .push(" AND i.min_unit <= ")
                .bind(*amount)
                .push(" AND i.max_unit >= ")
                .bind(*amount)
                .push(" AND ")
                .bind(*amount)
                .push(" % i.step_size = 0 AND (i.total - i.reserved) * i.allocation_ratio >= ")
                .bind(*amount)
                .push(" + i.used)");
        }
        q.push(" GROUP BY i.provider_uuid HAVING COUNT(*) = ")
            .bind(f.resources.len() as i64)
            .push(")");
    }
    for t in &f.required {
        q.push(" AND EXISTS (SELECT 1 FROM provider_traits pt WHERE pt.provider_uuid = rp.uuid AND pt.trait = ")
            .bind(t.clone())
            .push(")");
    }
    for t in &f.forbidden {
        q.push(" AND NOT EXISTS (SELECT 1 FROM provider_traits pt WHERE pt.provider_uuid = rp.uuid AND pt.trait = ")
            .bind(t.clone())
            .push(")");
    }
}

/// Providers matching `f`, oldest first.
pub async fn list_providers<'e>(
    ex: impl Executor<'e, Database = Any>,
    f: &ProviderFilter,
) -> Result<Vec<Provider>> {
    let mut q = Sql::new("SELECT rp.* FROM resource_providers rp WHERE 1 = 1");
    push_filter(&mut q, f);
    q.push(" ORDER BY rp.created_at, rp.uuid");
    if let Some(l) = f.limit {
        q.push(" LIMIT ").bind(l);
    }
    q.fetch_all(ex).await
}

/// The outcome of locking a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Locked until the transaction ends; its generation is now this.
    Locked(i64),
    /// No such provider.
    Missing,
    /// Its generation is not the one expected; this is the current one.
    Stale(i64),
}

/// Locks a provider for the rest of the transaction by bumping its
/// generation, if it is still `expected` (when given).
pub async fn lock_provider(
    conn: &mut AnyConnection,
    uuid: &str,
    expected: Option<i64>,
) -> Result<Lock> {
    let mut q =
        Sql::new("UPDATE resource_providers SET generation = generation + 1, updated_at = ");
    q.bind(Timestamp::now())
        .push(" WHERE uuid = ")
        .bind(uuid.to_owned());
    if let Some(g) = expected {
        q.push(" AND generation = ").bind(g);
    }
    q.push(" RETURNING generation");
    let rows: Vec<(i64,)> = q.fetch_all(&mut *conn).await?;
    if let Some((g,)) = rows.first() {
        return Ok(Lock::Locked(*g));
    }
    let current: Option<i64> =
        sqlx::query_scalar("SELECT generation FROM resource_providers WHERE uuid = $1")
            .bind(uuid)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match current {
        Some(g) => Lock::Stale(g),
        None => Lock::Missing,
    })
}

/// [`lock_provider`], turning `Missing` into 404 and `Stale` into 409.
pub async fn lock_provider_or_fail(
    conn: &mut AnyConnection,
    uuid: &str,
    expected: Option<i64>,
) -> Result<i64> {
    match lock_provider(conn, uuid, expected).await? {
        Lock::Locked(g) => Ok(g),
        Lock::Missing => Err(Error::not_found(format!(
            "No resource provider with uuid {uuid} found"
        ))
        .with_code(PROVIDER_NOT_FOUND)),
        Lock::Stale(_) => Err(concurrent(format!("resource provider {uuid}"))),
    }
}

/// Renames a provider and sets its parent (the caller checked the rules and
/// holds the lock). Giving a root provider a parent moves its whole tree
/// under the parent's root.
pub async fn update_provider(
    conn: &mut AnyConnection,
    uuid: &str,
    name: &str,
    parent: Option<&str>,
    new_root: &str,
) -> Result<()> {
    let old_root: String =
        sqlx::query_scalar("SELECT root_provider_uuid FROM resource_providers WHERE uuid = $1")
            .bind(uuid)
            .fetch_one(&mut *conn)
            .await?;
    sqlx::query(
        "UPDATE resource_providers SET name = $1, parent_provider_uuid = $2 WHERE uuid = $3",
    )
    .bind(name)
    .bind(parent)
    .bind(uuid)
    .execute(&mut *conn)
    .await?;
    if old_root != new_root {
        sqlx::query(
            "UPDATE resource_providers SET root_provider_uuid = $1 WHERE root_provider_uuid = $2",
        )
        .bind(new_root)
        .bind(&old_root)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Whether `ancestor` is `uuid` or one of its ancestors.
pub async fn is_ancestor_or_self(
    conn: &mut AnyConnection,
    ancestor: &str,
    uuid: &str,
) -> Result<bool> {
    let mut cur = Some(uuid.to_owned());
    let mut hops = 0;
    while let Some(c) = cur {
        if c == ancestor {
            return Ok(true);
        }
        hops += 1;
        if hops > 1000 {
            return Err(Error::internal(
                "walking a provider tree",
                "cycle suspected",
            ));
        }
        cur = sqlx::query_scalar::<_, Option<String>>(
            "SELECT parent_provider_uuid FROM resource_providers WHERE uuid = $1",
        )
        .bind(&c)
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
    }
    Ok(false)
}

/// Deletes a locked provider: 409 when it has children or allocations.
pub async fn delete_provider(conn: &mut AnyConnection, uuid: &str) -> Result<()> {
    let children: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM resource_providers WHERE parent_provider_uuid = $1",
    )
    .bind(uuid)
    .fetch_one(&mut *conn)
    .await?;
    if children > 0 {
        return Err(Error::conflict(format!(
            "Unable to delete parent resource provider {uuid}: It has child resource providers."
        ))
        .with_code(CANNOT_DELETE_PARENT));
    }
    let allocations: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM allocations WHERE provider_uuid = $1")
            .bind(uuid)
            .fetch_one(&mut *conn)
            .await?;
    if allocations > 0 {
        return Err(Error::conflict(format!(
            "Unable to delete resource provider {uuid}: Resource provider has allocations."
        ))
        .with_code(PROVIDER_INUSE));
    }
    sqlx::query("DELETE FROM resource_providers WHERE uuid = $1")
        .bind(uuid)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// ---- inventories and usage --------------------------------------------------------

/// The inventories of a provider, by resource class.
pub async fn inventories<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
) -> Result<Vec<Inventory>> {
    Ok(sqlx::query_as(
        "SELECT resource_class, total, reserved, min_unit, max_unit, step_size, allocation_ratio \
         FROM inventories WHERE provider_uuid = $1 ORDER BY resource_class",
    )
    .bind(uuid)
    .fetch_all(ex)
    .await?)
}

/// Usage of a provider per resource class (classes with allocations only).
pub async fn usages<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT resource_class, CAST(SUM(used) AS BIGINT) FROM allocations \
         WHERE provider_uuid = $1 GROUP BY resource_class",
    )
    .bind(uuid)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Replaces every inventory of a locked provider, refusing (409) to remove
/// a class in use or to shrink a class below its usage.
pub async fn replace_inventories(
    conn: &mut AnyConnection,
    uuid: &str,
    new: &[Inventory],
) -> Result<()> {
    let used = usages(&mut *conn, uuid).await?;
    let wanted: BTreeSet<&str> = new.iter().map(|i| i.resource_class.as_str()).collect();
    for (rc, n) in &used {
        if *n > 0 && !wanted.contains(rc.as_str()) {
            return Err(Error::conflict(format!(
                "Inventory for '{rc}' on resource provider '{uuid}' in use."
            ))
            .with_code(INVENTORY_INUSE));
        }
    }
    for inv in new {
        let u = used.get(&inv.resource_class).copied().unwrap_or(0);
        if u > inv.capacity() {
            return Err(Error::conflict(format!(
                "Unable to update inventory for resource provider {uuid}: \
                 '{}' would have capacity {} below its usage {u}.",
                inv.resource_class,
                inv.capacity()
            ))
            .with_code(INVENTORY_INUSE));
        }
    }
    sqlx::query("DELETE FROM inventories WHERE provider_uuid = $1")
        .bind(uuid)
        .execute(&mut *conn)
        .await?;
    for inv in new {
        sqlx::query(
            "INSERT INTO inventories (provider_uuid, resource_class, total, reserved, min_unit, \
             max_unit, step_size, allocation_ratio) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(uuid)
        .bind(&inv.resource_class)
        .bind(inv.total)
        .bind(inv.reserved)
        .bind(inv.min_unit)
        .bind(inv.max_unit)
        .bind(inv.step_size)
        .bind(inv.allocation_ratio)
        .execute(&mut *conn)
        .await?;
    }
    recompute_usage(conn, uuid).await
}

/// Brings `inventories.used` of a locked provider in step with its
/// allocations.
async fn recompute_usage(conn: &mut AnyConnection, uuid: &str) -> Result<()> {
    sqlx::query(
        "UPDATE inventories SET used = COALESCE((SELECT CAST(SUM(a.used) AS BIGINT) FROM allocations a \
         WHERE a.provider_uuid = inventories.provider_uuid AND a.resource_class = inventories.resource_class), 0) \
         WHERE provider_uuid = $1",
    )
    .bind(uuid)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Inventories whose `used` disagrees with their allocations (for tests
/// and audits): `(provider, class, used column, sum of allocations)`.
pub async fn usage_drift<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<Vec<(String, String, i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT i.provider_uuid, i.resource_class, i.used, \
         COALESCE((SELECT CAST(SUM(a.used) AS BIGINT) FROM allocations a \
         WHERE a.provider_uuid = i.provider_uuid AND a.resource_class = i.resource_class), 0) AS total_used \
         FROM inventories i WHERE i.used <> COALESCE((SELECT CAST(SUM(a.used) AS BIGINT) FROM allocations a \
         WHERE a.provider_uuid = i.provider_uuid AND a.resource_class = i.resource_class), 0)",
    )
    .fetch_all(ex)
    .await?)
}

// ---- resource classes and traits ------------------------------------------------------

/// Custom resource classes.
pub async fn custom_resource_classes<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT name FROM resource_classes ORDER BY name")
            .fetch_all(ex)
            .await?,
    )
}

/// Creates a custom resource class; false if it exists.
pub async fn create_resource_class<'e>(
    ex: impl Executor<'e, Database = Any>,
    name: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO resource_classes (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(Timestamp::now())
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Whether any inventory or allocation uses the class.
pub async fn resource_class_in_use(conn: &mut AnyConnection, name: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM inventories WHERE resource_class = $1) + \
                (SELECT COUNT(*) FROM allocations WHERE resource_class = $1)",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// Deletes a custom resource class; false if it did not exist.
pub async fn delete_resource_class<'e>(
    ex: impl Executor<'e, Database = Any>,
    name: &str,
) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM resource_classes WHERE name = $1")
        .bind(name)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// Renames a custom resource class (microversions 1.2–1.6); false if missing.
pub async fn rename_resource_class(conn: &mut AnyConnection, from: &str, to: &str) -> Result<bool> {
    let n = sqlx::query("UPDATE resource_classes SET name = $1 WHERE name = $2")
        .bind(to)
        .bind(from)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// Custom traits.
pub async fn custom_traits<'e>(ex: impl Executor<'e, Database = Any>) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT name FROM traits ORDER BY name")
        .fetch_all(ex)
        .await?)
}

/// Traits attached to at least one provider.
pub async fn associated_traits<'e>(ex: impl Executor<'e, Database = Any>) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT trait FROM provider_traits ORDER BY trait")
            .fetch_all(ex)
            .await?,
    )
}

/// Creates a custom trait; false if it exists.
pub async fn create_trait<'e>(ex: impl Executor<'e, Database = Any>, name: &str) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO traits (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(Timestamp::now())
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Deletes a custom trait: 409 when a provider has it; false if missing.
pub async fn delete_trait(conn: &mut AnyConnection, name: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM provider_traits WHERE trait = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    if n > 0 {
        return Err(Error::conflict(format!(
            "The trait {name} is in use by a resource provider."
        )));
    }
    Ok(sqlx::query("DELETE FROM traits WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1)
}

/// The traits of a provider.
pub async fn provider_traits<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT trait FROM provider_traits WHERE provider_uuid = $1 ORDER BY trait",
    )
    .bind(uuid)
    .fetch_all(ex)
    .await?)
}

/// Replaces the traits of a locked provider.
pub async fn replace_provider_traits(
    conn: &mut AnyConnection,
    uuid: &str,
    traits: &BTreeSet<String>,
) -> Result<()> {
    sqlx::query("DELETE FROM provider_traits WHERE provider_uuid = $1")
        .bind(uuid)
        .execute(&mut *conn)
        .await?;
    for t in traits {
        sqlx::query("INSERT INTO provider_traits (provider_uuid, trait) VALUES ($1, $2)")
            .bind(uuid)
            .bind(t)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The aggregates of a provider.
pub async fn provider_aggregates<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT aggregate_uuid FROM provider_aggregates WHERE provider_uuid = $1 ORDER BY aggregate_uuid",
    )
    .bind(uuid)
    .fetch_all(ex)
    .await?)
}

/// Replaces the aggregates of a provider (locked by the caller when the
/// generation matters).
pub async fn replace_provider_aggregates(
    conn: &mut AnyConnection,
    uuid: &str,
    aggregates: &BTreeSet<String>,
) -> Result<()> {
    sqlx::query("DELETE FROM provider_aggregates WHERE provider_uuid = $1")
        .bind(uuid)
        .execute(&mut *conn)
        .await?;
    for a in aggregates {
        sqlx::query(
            "INSERT INTO provider_aggregates (provider_uuid, aggregate_uuid) VALUES ($1, $2)",
        )
        .bind(uuid)
        .bind(a)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

// ---- consumers and allocations ---------------------------------------------------------

/// A consumer and its allocations.
pub async fn consumer_allocations<'e, E>(
    ex: E,
    consumer: &str,
) -> Result<Option<(Consumer, Vec<Allocation>)>>
where
    E: Executor<'e, Database = Any> + Copy,
{
    let c: Option<Consumer> = sqlx::query_as(
        "SELECT uuid, project_id, user_id, generation, updated_at FROM consumers WHERE uuid = $1",
    )
    .bind(consumer)
    .fetch_optional(ex)
    .await?;
    let Some(c) = c else { return Ok(None) };
    let allocations = sqlx::query_as(
        "SELECT consumer_uuid, provider_uuid, resource_class, used FROM allocations \
         WHERE consumer_uuid = $1 ORDER BY provider_uuid, resource_class",
    )
    .bind(consumer)
    .fetch_all(ex)
    .await?;
    Ok(Some((c, allocations)))
}

/// The allocations held on a provider.
pub async fn provider_allocations<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
) -> Result<Vec<Allocation>> {
    Ok(sqlx::query_as(
        "SELECT consumer_uuid, provider_uuid, resource_class, used FROM allocations \
         WHERE provider_uuid = $1 ORDER BY consumer_uuid, resource_class",
    )
    .bind(uuid)
    .fetch_all(ex)
    .await?)
}

/// Usage of a project (and user) across providers.
pub async fn project_usages<'e>(
    ex: impl Executor<'e, Database = Any>,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<BTreeMap<String, i64>> {
    let mut q = Sql::new(
        "SELECT a.resource_class, CAST(SUM(a.used) AS BIGINT) FROM allocations a \
         JOIN consumers c ON c.uuid = a.consumer_uuid WHERE c.project_id = ",
    );
    q.bind(project_id.to_owned());
    if let Some(u) = user_id {
        q.push(" AND c.user_id = ").bind(u.to_owned());
    }
    q.push(" GROUP BY a.resource_class");
    let rows: Vec<(String, i64)> = q.fetch_all(ex).await?;
    Ok(rows.into_iter().collect())
}

/// What a claim expects of its consumer's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerGeneration {
    /// Don't check (placement microversions before 1.28).
    Unchecked,
    /// The consumer must be new (have no allocations).
    New,
    /// The consumer's generation must be this.
    Is(i64),
}

/// The allocations one consumer should hold after [`write_allocations`].
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The consumer (an instance UUID, a migration UUID…).
    pub consumer_uuid: String,
    /// Its project.
    pub project_id: String,
    /// Its user.
    pub user_id: String,
    /// Generation check.
    pub consumer_generation: ConsumerGeneration,
    /// provider UUID → resource class → amount. Empty frees everything.
    pub allocations: BTreeMap<String, BTreeMap<String, i64>>,
}

/// Replaces the allocations of every consumer in `claims`, atomically, in
/// `conn`'s transaction (see the module doc). `provider_generations` holds
/// the generations the caller saw for providers it wants unchanged since.
///
/// Errors: 409 `placement.concurrent_update` on a generation mismatch
/// (consumer or provider); 409 when capacity, unit rules or a missing
/// inventory refuse an amount; 400 when a provider does not exist.
pub async fn write_allocations(
    conn: &mut AnyConnection,
    claims: &[Claim],
    provider_generations: &BTreeMap<String, i64>,
) -> Result<()> {
    let now = Timestamp::now();
    let mut sorted: Vec<&Claim> = claims.iter().collect();
    sorted.sort_by(|a, b| a.consumer_uuid.cmp(&b.consumer_uuid));

    // 1. Lock each consumer (in UUID order) and check its generation.
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut existing: Vec<bool> = Vec::new();
    for c in &sorted {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE consumers SET generation = generation + 1, updated_at = $1 WHERE uuid = $2 \
             RETURNING generation - 1",
        )
        .bind(now)
        .bind(&c.consumer_uuid)
        .fetch_all(&mut *conn)
        .await?;
        let current = rows.first().map(|r| r.0);
        match (c.consumer_generation, current) {
            (ConsumerGeneration::Unchecked, _) => {}
            (ConsumerGeneration::New, None) => {}
            (ConsumerGeneration::Is(g), Some(cur)) if g == cur => {}
            (want, cur) => {
                let want = match want {
                    ConsumerGeneration::Is(g) => g.to_string(),
                    _ => "None".into(),
                };
                let cur = cur.map(|g| g.to_string()).unwrap_or_else(|| "None".into());
                return Err(Error::conflict(format!(
                    "consumer generation conflict - expected {want} but got {cur}"
                ))
                .with_code(CONCURRENT_UPDATE));
            }
        }
        existing.push(current.is_some());
        if current.is_some() {
            let held: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT provider_uuid FROM allocations WHERE consumer_uuid = $1",
            )
            .bind(&c.consumer_uuid)
            .fetch_all(&mut *conn)
            .await?;
            touched.extend(held);
        }
        touched.extend(c.allocations.keys().cloned());
    }

    // 2. Lock every provider involved, in UUID order (no deadlock cycles).
    for p in &touched {
        match lock_provider(conn, p, provider_generations.get(p).copied()).await? {
            Lock::Locked(_) => {}
            Lock::Missing => {
                return Err(Error::bad_request(format!(
                    "Allocation for resource provider '{p}' that does not exist."
                )));
            }
            Lock::Stale(_) => return Err(concurrent(format!("resource provider {p}"))),
        }
    }

    // 3. Drop the old allocations, check the new ones, write them.
    for (c, exists) in sorted.iter().zip(existing) {
        sqlx::query("DELETE FROM allocations WHERE consumer_uuid = $1")
            .bind(&c.consumer_uuid)
            .execute(&mut *conn)
            .await?;
        if c.allocations.is_empty() {
            sqlx::query("DELETE FROM consumers WHERE uuid = $1")
                .bind(&c.consumer_uuid)
                .execute(&mut *conn)
                .await?;
            continue;
        }
        if exists {
            sqlx::query("UPDATE consumers SET project_id = $1, user_id = $2 WHERE uuid = $3")
                .bind(&c.project_id)
                .bind(&c.user_id)
                .bind(&c.consumer_uuid)
                .execute(&mut *conn)
                .await?;
        } else {
            sqlx::query(
                "INSERT INTO consumers (uuid, project_id, user_id, generation, created_at, updated_at) \
                 VALUES ($1, $2, $3, 1, $4, $4)",
            )
            .bind(&c.consumer_uuid)
            .bind(&c.project_id)
            .bind(&c.user_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
    }
    for c in &sorted {
        for (provider, resources) in &c.allocations {
            for (rc, amount) in resources {
                let inv: Option<(i64, i64, i64, i64, i64, f64, i64)> = sqlx::query_as(
                    "SELECT i.total, i.reserved, i.min_unit, i.max_unit, i.step_size, i.allocation_ratio, \
                     COALESCE((SELECT CAST(SUM(a.used) AS BIGINT) FROM allocations a \
                               WHERE a.provider_uuid = i.provider_uuid AND a.resource_class = i.resource_class), 0) \
                     FROM inventories i WHERE i.provider_uuid = $1 AND i.resource_class = $2",
                )
                .bind(provider)
                .bind(rc)
                .fetch_optional(&mut *conn)
                .await?;
                let Some((total, reserved, min_unit, max_unit, step_size, ratio, used)) = inv
                else {
                    return Err(Error::conflict(format!(
                        "Unable to allocate inventory: Inventory for '{rc}' on resource provider '{provider}' invalid."
                    )));
                };
                let inv = Inventory {
                    resource_class: rc.clone(),
                    total,
                    reserved,
                    min_unit,
                    max_unit,
                    step_size,
                    allocation_ratio: ratio,
                };
                if !inv.accepts_amount(*amount) {
                    return Err(Error::conflict(format!(
                        "Unable to allocate inventory: Unable to create allocation for '{rc}' on \
                         resource provider '{provider}'. The requested amount would violate inventory constraints."
                    )));
                }
                if used + amount > inv.capacity() {
                    return Err(Error::conflict(format!(
                        "Unable to allocate inventory: Unable to create allocation for '{rc}' on \
                         resource provider '{provider}'. The requested amount would exceed the capacity."
                    )));
                }
                sqlx::query(
                    "INSERT INTO allocations (consumer_uuid, provider_uuid, resource_class, used, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&c.consumer_uuid)
                .bind(provider)
                .bind(rc)
                .bind(amount)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    for p in &touched {
        recompute_usage(conn, p).await?;
    }
    Ok(())
}

// ---- allocation candidates --------------------------------------------------------------

/// A provider that can hold a request, with what the scheduler needs to
/// weigh it and to claim against it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The provider.
    pub provider: Provider,
    /// Its inventories.
    pub inventories: Vec<Inventory>,
    /// Its usage per resource class.
    pub usages: BTreeMap<String, i64>,
    /// Its traits.
    pub traits: Vec<String>,
}

/// The providers that alone can hold every resource of `f.resources` and
/// match its traits and aggregates, oldest first (at most `f.limit`).
/// Sharing providers and resources spread over a provider tree are not
/// considered: each candidate is one provider.
pub async fn allocation_candidates(
    conn: &mut AnyConnection,
    f: &ProviderFilter,
) -> Result<Vec<Candidate>> {
    let providers = list_providers(&mut *conn, f).await?;
    if providers.is_empty() {
        return Ok(vec![]);
    }
    let uuids: Vec<String> = providers.iter().map(|p| p.uuid.clone()).collect();
    // Inventories with usage, for every chosen provider, in one query.
    let mut q = Sql::new(
        "SELECT provider_uuid, resource_class, total, reserved, min_unit, max_unit, step_size, \
         allocation_ratio, used FROM inventories WHERE provider_uuid IN (",
    );
    q.bind_list(uuids.clone())
        .push(") ORDER BY provider_uuid, resource_class");
    let invs: Vec<ProviderInventory> = q.fetch_all(&mut *conn).await?;
    let mut q =
        Sql::new("SELECT provider_uuid, trait FROM provider_traits WHERE provider_uuid IN (");
    q.bind_list(uuids).push(") ORDER BY provider_uuid, trait");
    let traits: Vec<(String, String)> = q.fetch_all(&mut *conn).await?;

    let mut by_uuid: BTreeMap<String, Candidate> = providers
        .iter()
        .map(|p| {
            (
                p.uuid.clone(),
                Candidate {
                    provider: p.clone(),
                    inventories: vec![],
                    usages: BTreeMap::new(),
                    traits: vec![],
                },
            )
        })
        .collect();
    for pi in invs {
        if let Some(c) = by_uuid.get_mut(&pi.provider_uuid) {
            if pi.used > 0 {
                c.usages
                    .insert(pi.inventory.resource_class.clone(), pi.used);
            }
            c.inventories.push(pi.inventory);
        }
    }
    for (p, t) in traits {
        if let Some(c) = by_uuid.get_mut(&p) {
            c.traits.push(t);
        }
    }
    Ok(providers
        .iter()
        .filter_map(|p| by_uuid.remove(&p.uuid))
        .collect())
}
