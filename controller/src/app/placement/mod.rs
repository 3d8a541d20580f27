//! Placement: validation and policy over the placement datastore
//! ([`crate::db::placement`]). Every HTTP operation needs the
//! `placement:admin` rule; the conductor calls [`claim`] directly (to free
//! allocations). The scheduler reads and claims through its own datastore
//! module ([`crate::db::scheduler`]), not through these functions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use super::App;
use crate::context::Context;
use crate::db::Timestamp;
use crate::db::placement::{
    self as store, Candidate, Claim, DUPLICATE_NAME, Inventory, Provider, ProviderFilter,
};
use crate::error::{Error, Kind, Result};
use crate::policy::Target;

/// Standard resource classes (os-resource-classes).
pub const STANDARD_RESOURCE_CLASSES: [&str; 21] = [
    "VCPU",
    "MEMORY_MB",
    "DISK_GB",
    "PCI_DEVICE",
    "SRIOV_NET_VF",
    "NUMA_SOCKET",
    "NUMA_CORE",
    "NUMA_THREAD",
    "NUMA_MEMORY_MB",
    "IPV4_ADDRESS",
    "VGPU",
    "VGPU_DISPLAY_HEAD",
    "NET_BW_EGR_KILOBIT_PER_SEC",
    "NET_BW_IGR_KILOBIT_PER_SEC",
    "PCPU",
    "MEM_ENCRYPTION_CONTEXT",
    "FPGA",
    "PGPU",
    "NET_PACKET_RATE_KILOPACKET_PER_SEC",
    "NET_PACKET_RATE_EGR_KILOPACKET_PER_SEC",
    "NET_PACKET_RATE_IGR_KILOPACKET_PER_SEC",
];

/// Standard traits (os-traits).
pub static STANDARD_TRAITS: LazyLock<BTreeSet<&'static str>> = LazyLock::new(|| {
    include_str!("standard_traits.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Whether `name` is a well-formed custom name: `CUSTOM_[A-Z0-9_]+`.
pub fn is_custom_name(name: &str) -> bool {
    name.strip_prefix("CUSTOM_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

fn admin(app: &App, ctx: &Context) -> Result<()> {
    app.policy
        .enforce("placement:admin", ctx, Target::default())
}

fn provider_not_found(uuid: &str) -> Error {
    Error::not_found(format!("No resource provider with uuid {uuid} found"))
        .with_code(store::PROVIDER_NOT_FOUND)
}

/// Normalizes a UUID (any accepted form → hyphenated lowercase).
pub fn normalize_uuid(s: &str, what: &str) -> Result<String> {
    uuid::Uuid::parse_str(s)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::bad_request(format!("Malformed {what}: {s}")))
}

/// Whether a resource class exists (standard or custom).
pub async fn resource_class_exists(app: &App, name: &str) -> Result<bool> {
    if STANDARD_RESOURCE_CLASSES.contains(&name) {
        return Ok(true);
    }
    if !is_custom_name(name) {
        return Ok(false);
    }
    Ok(store::custom_resource_classes(app.db.pool())
        .await?
        .iter()
        .any(|c| c == name))
}

/// 400 unless every trait exists.
pub async fn check_traits_exist(app: &App, traits: &[String]) -> Result<()> {
    let mut custom: Option<BTreeSet<String>> = None;
    let mut missing = Vec::new();
    for t in traits {
        if STANDARD_TRAITS.contains(t.as_str()) {
            continue;
        }
        if custom.is_none() {
            custom = Some(
                store::custom_traits(app.db.pool())
                    .await?
                    .into_iter()
                    .collect(),
            );
        }
        if !custom.as_ref().is_some_and(|c| c.contains(t)) {
            missing.push(t.clone());
        }
    }
    if !missing.is_empty() {
        return Err(Error::bad_request(format!(
            "No such trait(s): {}.",
            missing.join(", ")
        )));
    }
    Ok(())
}

// ---- providers ----------------------------------------------------------------------

/// Creates a provider.
pub async fn create_provider(
    app: &App,
    ctx: &Context,
    name: &str,
    uuid: Option<&str>,
    parent: Option<&str>,
) -> Result<Provider> {
    admin(app, ctx)?;
    check_provider_name(name)?;
    let uuid = match uuid {
        Some(u) => normalize_uuid(u, "uuid")?,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let now = Timestamp::now();
    let mut tx = app.db.begin().await?;
    let root = match parent {
        None => uuid.clone(),
        Some(p) => {
            let p = normalize_uuid(p, "parent_provider_uuid")?;
            match store::get_provider(&mut *tx, &p).await? {
                Some(parent) => parent.root_provider_uuid,
                None => {
                    return Err(Error::bad_request(format!(
                        "The provider specified as a parent ({p}) does not exist."
                    )));
                }
            }
        }
    };
    let provider = Provider {
        uuid: uuid.clone(),
        name: name.to_owned(),
        generation: 0,
        parent_provider_uuid: parent.map(|p| normalize_uuid(p, "parent")).transpose()?,
        root_provider_uuid: root,
        created_at: now,
        updated_at: now,
    };
    if store::find_provider(&mut *tx, name).await?.is_some() {
        return Err(Error::conflict(format!(
            "Conflicting resource provider name: {name} already exists."
        ))
        .with_code(DUPLICATE_NAME));
    }
    store::create_provider(&mut *tx, &provider)
        .await
        .map_err(|e| {
            if e.is(Kind::Conflict) {
                Error::conflict(format!(
                    "Conflicting resource provider uuid: {uuid} already exists."
                ))
                .with_code(DUPLICATE_NAME)
            } else {
                e
            }
        })?;
    tx.commit().await?;
    Ok(provider)
}

fn check_provider_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 200 {
        return Err(Error::bad_request(
            "JSON does not validate: 'name' must be 1 to 200 characters.",
        ));
    }
    Ok(())
}

/// A provider.
pub async fn get_provider(app: &App, ctx: &Context, uuid: &str) -> Result<Provider> {
    admin(app, ctx)?;
    store::get_provider(app.db.pool(), uuid)
        .await?
        .ok_or_else(|| provider_not_found(uuid))
}

/// Providers matching a filter (traits and resource classes must exist).
pub async fn list_providers(
    app: &App,
    ctx: &Context,
    mut f: ProviderFilter,
) -> Result<Vec<Provider>> {
    admin(app, ctx)?;
    validate_filter(app, &f).await?;
    if let Some(t) = &f.in_tree_root {
        // `in_tree` names any provider of the tree; filter on its root.
        match store::get_provider(app.db.pool(), t).await? {
            Some(p) => f.in_tree_root = Some(p.root_provider_uuid),
            None => return Ok(vec![]),
        }
    }
    store::list_providers(app.db.pool(), &f).await
}

async fn validate_filter(app: &App, f: &ProviderFilter) -> Result<()> {
    for (rc, amount) in &f.resources {
        if !resource_class_exists(app, rc).await? {
            return Err(Error::bad_request(format!(
                "Invalid resource class in resources parameter: No such resource class {rc}."
            )));
        }
        if *amount < 1 {
            return Err(Error::bad_request(format!(
                "Requested resource {rc} expected positive integer amount."
            )));
        }
    }
    let named: Vec<String> = f
        .required
        .iter()
        .chain(f.forbidden.iter())
        .cloned()
        .collect();
    check_traits_exist(app, &named).await?;
    let both: Vec<&String> = f
        .required
        .iter()
        .filter(|t| f.forbidden.contains(t))
        .collect();
    if !both.is_empty() {
        return Err(Error::bad_request(format!(
            "Conflicting required and forbidden traits found: {}",
            both.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Changes a provider's name and parent. A parent can be given to a root
/// provider but never changed or removed once set (placement before 1.37).
pub async fn update_provider(
    app: &App,
    ctx: &Context,
    uuid: &str,
    name: &str,
    generation: Option<i64>,
    parent: Option<Option<String>>,
) -> Result<Provider> {
    admin(app, ctx)?;
    check_provider_name(name)?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            let current = store::get_provider(&mut *tx, uuid)
                .await?
                .ok_or_else(|| provider_not_found(uuid))?;
            store::lock_provider_or_fail(&mut tx, uuid, generation).await?;
            let (new_parent, new_root) = match &parent {
                None => (
                    current.parent_provider_uuid.clone(),
                    current.root_provider_uuid.clone(),
                ),
                Some(p) if *p == current.parent_provider_uuid => (
                    current.parent_provider_uuid.clone(),
                    current.root_provider_uuid.clone(),
                ),
                Some(_) if current.parent_provider_uuid.is_some() => {
                    return Err(Error::bad_request(
                        "re-parenting a provider is not currently allowed.",
                    ));
                }
                Some(None) => unreachable!("handled: equal to the current None parent"),
                Some(Some(p)) => {
                    let p = normalize_uuid(p, "parent_provider_uuid")?;
                    let parent = store::get_provider(&mut *tx, &p).await?.ok_or_else(|| {
                        Error::bad_request(format!(
                            "The provider specified as a parent ({p}) does not exist."
                        ))
                    })?;
                    if store::is_ancestor_or_self(&mut tx, uuid, &p).await? {
                        return Err(Error::bad_request(
                            "creating loop in the provider tree is not allowed.",
                        ));
                    }
                    (Some(p), parent.root_provider_uuid)
                }
            };
            if name != current.name && store::find_provider(&mut *tx, name).await?.is_some() {
                return Err(Error::conflict(format!(
                    "Conflicting resource provider name: {name} already exists."
                ))
                .with_code(DUPLICATE_NAME));
            }
            store::update_provider(&mut tx, uuid, name, new_parent.as_deref(), &new_root).await?;
            let p = store::get_provider(&mut *tx, uuid)
                .await?
                .ok_or_else(|| provider_not_found(uuid))?;
            tx.commit().await?;
            Ok(p)
        })
        .await
}

/// Deletes a provider (409 with children or allocations).
pub async fn delete_provider(app: &App, ctx: &Context, uuid: &str) -> Result<()> {
    admin(app, ctx)?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            store::lock_provider_or_fail(&mut tx, uuid, None).await?;
            store::delete_provider(&mut tx, uuid).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
}

// ---- inventories ----------------------------------------------------------------------

/// A provider's generation and inventories.
pub async fn inventories(
    app: &App,
    ctx: &Context,
    uuid: &str,
) -> Result<(Provider, Vec<Inventory>)> {
    let p = get_provider(app, ctx, uuid).await?;
    let inv = store::inventories(app.db.pool(), uuid).await?;
    Ok((p, inv))
}

/// Checks an inventory's numbers; `reserved == total` is allowed when
/// `reserved_can_be_total` (microversion 1.26).
pub fn validate_inventory(inv: &Inventory, reserved_can_be_total: bool) -> Result<()> {
    let rc = &inv.resource_class;
    let in_range = |v: i64, min: i64| v >= min && v <= store::MAX_INT;
    if !in_range(inv.total, 1)
        || !in_range(inv.reserved, 0)
        || !in_range(inv.min_unit, 1)
        || !in_range(inv.max_unit, 1)
        || !in_range(inv.step_size, 1)
    {
        return Err(Error::bad_request(format!(
            "JSON does not validate: inventory values for {rc} must be integers in range \
             (total, min_unit, max_unit, step_size ≥ 1; reserved ≥ 0; all ≤ {})",
            store::MAX_INT
        )));
    }
    if !(inv.allocation_ratio > 0.0 && inv.allocation_ratio <= 3.4e38) {
        return Err(Error::bad_request(format!(
            "JSON does not validate: allocation_ratio for {rc} must be positive."
        )));
    }
    if inv.reserved > inv.total || (inv.reserved == inv.total && !reserved_can_be_total) {
        return Err(Error::bad_request(format!(
            "Unable to update inventory for resource provider: Invalid inventory for '{rc}': \
             reserved must be less than total."
        )));
    }
    if inv.min_unit > inv.max_unit {
        return Err(Error::bad_request(format!(
            "Unable to update inventory: Invalid inventory for '{rc}': min_unit exceeds max_unit."
        )));
    }
    Ok(())
}

/// Replaces every inventory of a provider if its generation is still
/// `generation`; returns the new generation.
pub async fn set_inventories(
    app: &App,
    ctx: &Context,
    uuid: &str,
    generation: i64,
    new: Vec<Inventory>,
    reserved_can_be_total: bool,
) -> Result<i64> {
    admin(app, ctx)?;
    for inv in &new {
        if !resource_class_exists(app, &inv.resource_class).await? {
            return Err(Error::bad_request(format!(
                "Unknown resource class in inventory for resource provider {uuid}: {}",
                inv.resource_class
            )));
        }
        validate_inventory(inv, reserved_can_be_total)?;
    }
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            let g = store::lock_provider_or_fail(&mut tx, uuid, Some(generation)).await?;
            store::replace_inventories(&mut tx, uuid, &new).await?;
            tx.commit().await?;
            Ok(g)
        })
        .await
}

/// Changes one inventory (adds it if missing) under a generation check.
pub async fn set_inventory(
    app: &App,
    ctx: &Context,
    uuid: &str,
    generation: i64,
    inv: Inventory,
    must_be_new: bool,
    reserved_can_be_total: bool,
) -> Result<i64> {
    admin(app, ctx)?;
    if !resource_class_exists(app, &inv.resource_class).await? {
        return Err(Error::bad_request(format!(
            "No such resource class {}.",
            inv.resource_class
        )));
    }
    validate_inventory(&inv, reserved_can_be_total)?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            let g = store::lock_provider_or_fail(&mut tx, uuid, Some(generation)).await?;
            let mut all = store::inventories(&mut *tx, uuid).await?;
            let existing = all.iter().position(|i| i.resource_class == inv.resource_class);
            match (existing, must_be_new) {
                (Some(_), true) => {
                    return Err(Error::conflict(format!(
                        "Update conflict: Inventory for '{}' on resource provider '{uuid}' already exists.",
                        inv.resource_class
                    )));
                }
                (None, false) => {
                    return Err(Error::bad_request(format!(
                        "No inventory record with resource class for resource provider {uuid}."
                    )));
                }
                (Some(i), false) => all[i] = inv.clone(),
                (None, true) => all.push(inv.clone()),
            }
            store::replace_inventories(&mut tx, uuid, &all).await?;
            tx.commit().await?;
            Ok(g)
        })
        .await
}

/// Deletes one inventory (409 when in use). Unlike the others this takes no
/// generation: placement's `DELETE …/inventories/{rc}` has none.
pub async fn delete_inventory(app: &App, ctx: &Context, uuid: &str, rc: &str) -> Result<()> {
    admin(app, ctx)?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            store::lock_provider_or_fail(&mut tx, uuid, None).await?;
            let mut all = store::inventories(&mut *tx, uuid).await?;
            let before = all.len();
            all.retain(|i| i.resource_class != rc);
            if all.len() == before {
                return Err(Error::not_found(format!(
                    "No inventory of class {rc} found for delete"
                )));
            }
            store::replace_inventories(&mut tx, uuid, &all).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
}

/// A provider's usage per resource class (every inventoried class, 0 when
/// unused), with the provider.
pub async fn usages(
    app: &App,
    ctx: &Context,
    uuid: &str,
) -> Result<(Provider, BTreeMap<String, i64>)> {
    let p = get_provider(app, ctx, uuid).await?;
    let mut out: BTreeMap<String, i64> = store::inventories(app.db.pool(), uuid)
        .await?
        .into_iter()
        .map(|i| (i.resource_class, 0))
        .collect();
    out.extend(store::usages(app.db.pool(), uuid).await?);
    Ok((p, out))
}

/// Usage of a project (and user).
pub async fn project_usages(
    app: &App,
    ctx: &Context,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<BTreeMap<String, i64>> {
    admin(app, ctx)?;
    store::project_usages(app.db.pool(), project_id, user_id).await
}

// ---- traits and aggregates ------------------------------------------------------------------

/// Replaces a provider's traits under a generation check.
pub async fn set_provider_traits(
    app: &App,
    ctx: &Context,
    uuid: &str,
    generation: i64,
    traits: BTreeSet<String>,
) -> Result<i64> {
    admin(app, ctx)?;
    let named: Vec<String> = traits.iter().cloned().collect();
    check_traits_exist(app, &named).await?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            let g = store::lock_provider_or_fail(&mut tx, uuid, Some(generation)).await?;
            store::replace_provider_traits(&mut tx, uuid, &traits).await?;
            tx.commit().await?;
            Ok(g)
        })
        .await
}

/// Removes every trait of a provider.
pub async fn clear_provider_traits(app: &App, ctx: &Context, uuid: &str) -> Result<()> {
    admin(app, ctx)?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            store::lock_provider_or_fail(&mut tx, uuid, None).await?;
            store::replace_provider_traits(&mut tx, uuid, &BTreeSet::new()).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
}

/// Replaces a provider's aggregates; with a generation (1.19+) checks it
/// and bumps it, without one (before 1.19) does neither.
pub async fn set_provider_aggregates(
    app: &App,
    ctx: &Context,
    uuid: &str,
    generation: Option<i64>,
    aggregates: BTreeSet<String>,
) -> Result<i64> {
    admin(app, ctx)?;
    let aggregates = aggregates
        .iter()
        .map(|a| normalize_uuid(a, "aggregate uuid"))
        .collect::<Result<BTreeSet<_>>>()?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            let g = match generation {
                Some(g) => store::lock_provider_or_fail(&mut tx, uuid, Some(g)).await?,
                None => {
                    store::get_provider(&mut *tx, uuid)
                        .await?
                        .ok_or_else(|| provider_not_found(uuid))?
                        .generation
                }
            };
            store::replace_provider_aggregates(&mut tx, uuid, &aggregates).await?;
            tx.commit().await?;
            Ok(g)
        })
        .await
}

/// Every trait (standard and custom), optionally filtered.
pub async fn list_traits(
    app: &App,
    ctx: &Context,
    prefix: Option<&str>,
    names: Option<&BTreeSet<String>>,
    associated: Option<bool>,
) -> Result<Vec<String>> {
    admin(app, ctx)?;
    let mut all: BTreeSet<String> = STANDARD_TRAITS.iter().map(|s| s.to_string()).collect();
    all.extend(store::custom_traits(app.db.pool()).await?);
    if let Some(a) = associated {
        let used: BTreeSet<String> = store::associated_traits(app.db.pool())
            .await?
            .into_iter()
            .collect();
        all.retain(|t| used.contains(t) == a);
    }
    if let Some(p) = prefix {
        all.retain(|t| t.starts_with(p));
    }
    if let Some(n) = names {
        all.retain(|t| n.contains(t));
    }
    Ok(all.into_iter().collect())
}

/// Whether a trait exists.
pub async fn trait_exists(app: &App, ctx: &Context, name: &str) -> Result<bool> {
    admin(app, ctx)?;
    if STANDARD_TRAITS.contains(name) {
        return Ok(true);
    }
    Ok(store::custom_traits(app.db.pool())
        .await?
        .iter()
        .any(|t| t == name))
}

/// Creates a custom trait; returns whether it was created (false: existed).
pub async fn create_trait(app: &App, ctx: &Context, name: &str) -> Result<bool> {
    admin(app, ctx)?;
    if STANDARD_TRAITS.contains(name) {
        return Ok(false);
    }
    if !is_custom_name(name) {
        return Err(Error::bad_request(format!(
            "The trait is invalid. A valid trait must be no longer than 255 characters, \
             start with the prefix \"CUSTOM_\" and use following characters: \"A\"-\"Z\", \
             \"0\"-\"9\" and \"_\" ({name})"
        )));
    }
    store::create_trait(app.db.pool(), name).await
}

/// Deletes a custom trait.
pub async fn delete_trait(app: &App, ctx: &Context, name: &str) -> Result<()> {
    admin(app, ctx)?;
    if STANDARD_TRAITS.contains(name) {
        return Err(Error::bad_request(format!(
            "Cannot delete standard trait {name}."
        )));
    }
    let mut conn = app.db.pool().acquire().await?;
    if !store::delete_trait(&mut conn, name).await? {
        return Err(Error::not_found(format!("No such trait(s): {name}")));
    }
    Ok(())
}

// ---- resource classes --------------------------------------------------------------------------

/// Every resource class, standard then custom.
pub async fn list_resource_classes(app: &App, ctx: &Context) -> Result<Vec<String>> {
    admin(app, ctx)?;
    let mut all: Vec<String> = STANDARD_RESOURCE_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(store::custom_resource_classes(app.db.pool()).await?);
    Ok(all)
}

/// 400 unless a well-formed custom resource class name.
pub fn check_custom_class_name(name: &str) -> Result<()> {
    if !is_custom_name(name) || name.len() > 255 {
        return Err(Error::bad_request(format!(
            "JSON does not validate: '{name}' does not match '^CUSTOM_[A-Z0-9_]+$'"
        )));
    }
    Ok(())
}

/// Creates a custom class; Ok(false) when it exists already.
pub async fn create_resource_class(app: &App, ctx: &Context, name: &str) -> Result<bool> {
    admin(app, ctx)?;
    if STANDARD_RESOURCE_CLASSES.contains(&name) {
        return Ok(false);
    }
    check_custom_class_name(name)?;
    store::create_resource_class(app.db.pool(), name).await
}

/// Whether a class exists (404 otherwise).
pub async fn get_resource_class(app: &App, ctx: &Context, name: &str) -> Result<()> {
    admin(app, ctx)?;
    if resource_class_exists(app, name).await? {
        Ok(())
    } else {
        Err(Error::not_found(format!("No such resource class {name}.")))
    }
}

/// Renames a custom class (1.2–1.6).
pub async fn rename_resource_class(app: &App, ctx: &Context, from: &str, to: &str) -> Result<()> {
    admin(app, ctx)?;
    if STANDARD_RESOURCE_CLASSES.contains(&from) {
        return Err(Error::bad_request(format!(
            "Cannot update standard resource class {from}"
        )));
    }
    check_custom_class_name(to)?;
    let mut tx = app.db.begin().await?;
    if store::resource_class_in_use(&mut tx, from).await? {
        return Err(Error::conflict(format!(
            "Unable to update resource class {from}: it is in use."
        )));
    }
    if !store::rename_resource_class(&mut tx, from, to)
        .await
        .map_err(|e| {
            if e.is(Kind::Conflict) {
                Error::conflict(format!("Resource class already exists: {to}"))
            } else {
                e
            }
        })?
    {
        return Err(Error::not_found(format!("No such resource class {from}.")));
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes a custom class (409 when in use).
pub async fn delete_resource_class(app: &App, ctx: &Context, name: &str) -> Result<()> {
    admin(app, ctx)?;
    if STANDARD_RESOURCE_CLASSES.contains(&name) {
        return Err(Error::bad_request(format!(
            "Cannot delete standard resource class {name}: "
        )));
    }
    let mut tx = app.db.begin().await?;
    if store::resource_class_in_use(&mut tx, name).await? {
        return Err(Error::conflict(format!(
            "Unable to delete resource class {name}. The resource class is in use in inventory."
        )));
    }
    if !store::delete_resource_class(&mut *tx, name).await? {
        return Err(Error::not_found(format!("No such resource class {name}.")));
    }
    tx.commit().await?;
    Ok(())
}

// ---- allocations -----------------------------------------------------------------------------------

/// A consumer's allocations, with each provider's generation.
pub async fn consumer_allocations(
    app: &App,
    ctx: &Context,
    consumer: &str,
) -> Result<Option<(store::Consumer, Vec<(store::Allocation, i64)>)>> {
    admin(app, ctx)?;
    let Some((c, allocs)) = store::consumer_allocations(app.db.pool(), consumer).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let mut gens: BTreeMap<String, i64> = BTreeMap::new();
    for a in allocs {
        let g = match gens.get(&a.provider_uuid) {
            Some(g) => *g,
            None => {
                let g = store::get_provider(app.db.pool(), &a.provider_uuid)
                    .await?
                    .map(|p| p.generation)
                    .unwrap_or(0);
                gens.insert(a.provider_uuid.clone(), g);
                g
            }
        };
        out.push((a, g));
    }
    Ok(Some((c, out)))
}

/// The allocations on a provider, with the provider.
pub async fn provider_allocations(
    app: &App,
    ctx: &Context,
    uuid: &str,
) -> Result<(Provider, Vec<store::Allocation>)> {
    let p = get_provider(app, ctx, uuid).await?;
    let a = store::provider_allocations(app.db.pool(), uuid).await?;
    Ok((p, a))
}

/// Checks the amounts of a claim (placement's JSON schema rules).
fn validate_claims(claims: &[Claim]) -> Result<()> {
    for c in claims {
        for (p, resources) in &c.allocations {
            if resources.is_empty() {
                return Err(Error::bad_request(format!(
                    "JSON does not validate: resources of provider {p} must not be empty."
                )));
            }
            for (rc, n) in resources {
                if *n < 1 || *n > store::MAX_INT {
                    return Err(Error::bad_request(format!(
                        "JSON does not validate: {n} for {rc} is not a positive integer up to {}.",
                        store::MAX_INT
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Writes allocations (HTTP `PUT /allocations/{c}`, `POST /allocations`).
pub async fn put_allocations(app: &App, ctx: &Context, claims: Vec<Claim>) -> Result<()> {
    admin(app, ctx)?;
    for c in &claims {
        for p in c.allocations.keys() {
            if store::get_provider(app.db.pool(), p).await?.is_none() {
                return Err(Error::bad_request(format!(
                    "Allocation for resource provider '{p}' that does not exist."
                )));
            }
            for rc in c.allocations[p].keys() {
                if !resource_class_exists(app, rc).await? {
                    return Err(Error::bad_request(format!(
                        "Unable to allocate inventory for consumer {}: No such resource class {rc}.",
                        c.consumer_uuid
                    )));
                }
            }
        }
    }
    claim(app, &claims, &BTreeMap::new()).await
}

/// The scheduler's claim: writes `claims` atomically, checking capacity
/// and, for providers in `provider_generations`, that they did not change
/// since the candidates were read. Lost lock races are retried; a 409 means
/// the caller should read fresh candidates and try again.
pub async fn claim(
    app: &App,
    claims: &[Claim],
    provider_generations: &BTreeMap<String, i64>,
) -> Result<()> {
    validate_claims(claims)?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            store::write_allocations(&mut tx, claims, provider_generations).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
}

/// Deletes a consumer's allocations (404 when it has none).
pub async fn delete_allocations(app: &App, ctx: &Context, consumer: &str) -> Result<()> {
    admin(app, ctx)?;
    let Some((c, _)) = store::consumer_allocations(app.db.pool(), consumer).await? else {
        return Err(Error::not_found(format!(
            "No allocations for consumer '{consumer}'"
        )));
    };
    claim(
        app,
        &[Claim {
            consumer_uuid: consumer.to_owned(),
            project_id: c.project_id,
            user_id: c.user_id,
            consumer_generation: store::ConsumerGeneration::Unchecked,
            allocations: BTreeMap::new(),
        }],
        &BTreeMap::new(),
    )
    .await
}

/// Allocation candidates for `f` (HTTP: admin only), honouring `[placement]
/// randomize_allocation_candidates` and `max_allocation_candidates`.
pub async fn allocation_candidates(
    app: &App,
    ctx: &Context,
    f: ProviderFilter,
) -> Result<Vec<Candidate>> {
    admin(app, ctx)?;
    candidates(app, f).await
}

/// [`allocation_candidates`] without policy (the query behind the API, timed
/// directly by `benches/controller.rs`).
pub async fn candidates(app: &App, mut f: ProviderFilter) -> Result<Vec<Candidate>> {
    if f.resources.is_empty() {
        return Err(Error::bad_request(
            "Badly formed resources parameter. Expected resources query string parameter in form: \
             ?resources=VCPU:2,MEMORY_MB:1024. Got: empty string.",
        ));
    }
    validate_filter(app, &f).await?;
    let cfg = &app.config.placement;
    let wanted = f.limit;
    let max = (cfg.max_allocation_candidates >= 0).then_some(cfg.max_allocation_candidates);
    f.limit = if cfg.randomize_allocation_candidates {
        max
    } else {
        match (wanted, max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    };
    let mut conn = app.db.pool().acquire().await?;
    let mut found = store::allocation_candidates(&mut conn, &f).await?;
    if cfg.randomize_allocation_candidates {
        // Fisher–Yates with the OS random source.
        for i in (1..found.len()).rev() {
            let j = crate::db::random_u32() as usize % (i + 1);
            found.swap(i, j);
        }
        if let Some(n) = wanted {
            found.truncate(n.max(0) as usize);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_names() {
        assert!(is_custom_name("CUSTOM_GOLD"));
        assert!(is_custom_name("CUSTOM_A_1"));
        assert!(!is_custom_name("CUSTOM_"));
        assert!(!is_custom_name("CUSTOM_gold"));
        assert!(!is_custom_name("GOLD"));
    }

    #[test]
    fn standard_traits_are_loaded() {
        assert!(STANDARD_TRAITS.len() > 300);
        assert!(STANDARD_TRAITS.contains("HW_CPU_X86_AVX2"));
        assert!(STANDARD_TRAITS.contains("COMPUTE_STATUS_DISABLED"));
        assert!(!STANDARD_TRAITS.iter().any(|t| t.starts_with('#')));
    }

    #[test]
    fn inventory_rules() {
        let inv = |total, reserved, min_unit, max_unit| Inventory {
            resource_class: "VCPU".into(),
            total,
            reserved,
            min_unit,
            max_unit,
            step_size: 1,
            allocation_ratio: 1.0,
        };
        assert!(validate_inventory(&inv(8, 0, 1, 8), false).is_ok());
        assert!(validate_inventory(&inv(8, 8, 1, 8), false).is_err());
        assert!(validate_inventory(&inv(8, 8, 1, 8), true).is_ok());
        assert!(validate_inventory(&inv(8, 9, 1, 8), true).is_err());
        assert!(validate_inventory(&inv(0, 0, 1, 8), true).is_err());
        assert!(validate_inventory(&inv(8, 0, 4, 2), true).is_err());
        let mut i = inv(16, 0, 1, 16);
        i.allocation_ratio = 1.5;
        assert_eq!(i.capacity(), 24);
        i.reserved = 1;
        assert_eq!(i.capacity(), 22);
        assert!(i.accepts_amount(16));
        assert!(!i.accepts_amount(17));
        i.step_size = 2;
        assert!(!i.accepts_amount(3));
    }
}
