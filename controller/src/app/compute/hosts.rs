//! Hosts as operators see them: compute services (`os-services`),
//! hypervisors with statistics from placement and the agents' reports
//! (`os-hypervisors`), availability zones, and host aggregates (mirrored
//! into placement aggregates for the scheduler).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::common::{bool_field, invalid, str_field};
use super::servers::is_up;
use crate::app::App;
use crate::context::Context;
use crate::db::hosts::{self as store, Aggregate, NodeRow, ServiceRow};
use crate::db::{Timestamp, instances, placement};
use crate::error::{Error, Kind, Result};
use crate::policy::Target;

/// The zone of internal (non-compute) services.
pub const INTERNAL_ZONE: &str = "internal";

/// A service with its derived state.
#[derive(Debug, Clone)]
pub struct Service {
    /// The row.
    pub row: ServiceRow,
    /// Heartbeat recent and not forced down.
    pub up: bool,
    /// Its availability zone.
    pub zone: String,
}

async fn zone_map(app: &App) -> Result<BTreeMap<String, String>> {
    store::host_zones(app.db.pool()).await
}

fn zone_of(app: &App, zones: &BTreeMap<String, String>, s: &ServiceRow) -> String {
    if s.binary_name != "nova-compute" {
        return INTERNAL_ZONE.into();
    }
    zones
        .get(&s.host)
        .cloned()
        .unwrap_or_else(|| app.config.compute.default_availability_zone.clone())
}

async fn with_state(app: &App, rows: Vec<ServiceRow>) -> Result<Vec<Service>> {
    let zones = zone_map(app).await?;
    let now = Timestamp::now();
    let down = app.config.compute.service_down_time_secs;
    Ok(rows
        .into_iter()
        .map(|row| Service {
            up: is_up(&row, now, down),
            zone: zone_of(app, &zones, &row),
            row,
        })
        .collect())
}

/// Services, optionally of one host and/or binary.
pub async fn list_services(
    app: &App,
    ctx: &Context,
    host: Option<&str>,
    binary: Option<&str>,
) -> Result<Vec<Service>> {
    app.policy
        .enforce("os_compute_api:os-services:list", ctx, Target::default())?;
    let rows = store::list_services(app.db.pool(), host, binary).await?;
    with_state(app, rows).await
}

fn service_not_found(id: &str) -> Error {
    Error::not_found(format!("Service {id} could not be found."))
}

/// Changes a service by id (2.53: `status`, `disabled_reason`,
/// `forced_down`).
pub async fn update_service(
    app: &App,
    ctx: &Context,
    id: &str,
    body: &Map<String, Value>,
) -> Result<Service> {
    app.policy
        .enforce("os_compute_api:os-services:update", ctx, Target::default())?;
    let s = store::get_service(app.db.pool(), id)
        .await?
        .ok_or_else(|| service_not_found(id))?;
    for k in body.keys() {
        if !["status", "disabled_reason", "forced_down"].contains(&k.as_str()) {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute service. Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
    }
    if body.is_empty() {
        return Err(Error::bad_request(
            "At least one of 'status' or 'forced_down' should be specified.",
        ));
    }
    let status = match body.get("status") {
        None => None,
        Some(Value::String(s)) if s == "enabled" => Some(false),
        Some(Value::String(s)) if s == "disabled" => Some(true),
        Some(v) => {
            return Err(invalid(
                "status",
                v,
                "is not one of ['enabled', 'disabled']",
            ));
        }
    };
    let reason = match body.get("disabled_reason") {
        None | Some(Value::Null) => None,
        Some(v) => Some(str_field("disabled_reason", v, 1, 255)?),
    };
    if reason.is_some() && status != Some(true) {
        return Err(Error::bad_request(
            "Specifying 'disabled_reason' with status 'enabled' is invalid.",
        ));
    }
    if s.binary_name != "nova-compute" && (status.is_some() || body.contains_key("forced_down")) {
        return Err(Error::bad_request(format!(
            "Updating a {} service is not supported. Only nova-compute services can be updated.",
            s.binary_name
        )));
    }
    if let Some(d) = status {
        store::set_disabled(
            app.db.pool(),
            s.id,
            d,
            if d { reason.as_deref() } else { None },
        )
        .await?;
    }
    if let Some(f) = body.get("forced_down") {
        let f = bool_field("forced_down", f)?;
        store::set_forced_down(app.db.pool(), s.id, f).await?;
    }
    let row = store::get_service(app.db.pool(), id)
        .await?
        .ok_or_else(|| service_not_found(id))?;
    Ok(with_state(app, vec![row]).await?.remove(0))
}

/// The service of (`host`, `binary`) (the pre-2.53 `PUT` actions).
pub async fn service_by_host(
    app: &App,
    ctx: &Context,
    host: &str,
    binary: &str,
) -> Result<ServiceRow> {
    app.policy
        .enforce("os_compute_api:os-services:update", ctx, Target::default())?;
    store::list_services(app.db.pool(), Some(host), Some(binary))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::not_found(format!("Host '{host}' is not mapped to any cell")))
}

/// Deletes a service (and its compute nodes); 409 while it hosts servers.
pub async fn delete_service(app: &App, ctx: &Context, id: &str) -> Result<()> {
    app.policy
        .enforce("os_compute_api:os-services:delete", ctx, Target::default())?;
    let s = store::get_service(app.db.pool(), id)
        .await?
        .ok_or_else(|| service_not_found(id))?;
    if s.binary_name == "nova-compute" {
        let on = instances::list_instances_on_host(app.db.pool(), &s.host).await?;
        if !on.is_empty() {
            return Err(Error::conflict(
                "Unable to delete compute service that is hosting instances. Migrate or delete the instances first.",
            ));
        }
        store::delete_nodes_of_host(app.db.pool(), &s.host).await?;
    }
    if !store::delete_service(app.db.pool(), s.id).await? {
        return Err(service_not_found(id));
    }
    Ok(())
}

// ---- hypervisors ------------------------------------------------------------------------

/// A hypervisor with its statistics.
#[derive(Debug, Clone)]
pub struct Hypervisor {
    /// The node.
    pub node: NodeRow,
    /// Its service, with state.
    pub service: Option<Service>,
    /// vCPUs (placement inventory, else the agent's report).
    pub vcpus: i64,
    /// vCPUs allocated.
    pub vcpus_used: i64,
    /// RAM in MiB.
    pub memory_mb: i64,
    /// RAM allocated.
    pub memory_mb_used: i64,
    /// Disk in GiB.
    pub local_gb: i64,
    /// Disk allocated.
    pub local_gb_used: i64,
    /// Live instances on the host.
    pub running_vms: i64,
    /// Instances on the host (uuid, name), for `with_servers`.
    pub servers: Vec<(String, String)>,
}

/// `node` as the API shows it; `running` is the live instances per host
/// ([`instances::count_instances_by_host`], read once per request).
async fn hypervisor(
    app: &App,
    node: NodeRow,
    with_servers: bool,
    running: &BTreeMap<String, i64>,
) -> Result<Hypervisor> {
    let inv = placement::inventories(app.db.pool(), &node.uuid).await?;
    let used = placement::usages(app.db.pool(), &node.uuid).await?;
    let total = |rc: &str, reported: i64| {
        inv.iter()
            .find(|i| i.resource_class == rc)
            .map(|i| i.total)
            .unwrap_or(reported)
    };
    let service = match node.service_id {
        Some(id) => store::get_service(app.db.pool(), &id.to_string()).await?,
        None => None,
    };
    let service = match service {
        Some(s) => Some(with_state(app, vec![s]).await?.remove(0)),
        None => None,
    };
    let servers = if with_servers {
        instances::list_instances_on_host(app.db.pool(), &node.host)
            .await?
            .iter()
            .filter(|i| {
                i.node
                    .as_deref()
                    .is_none_or(|n| n == node.hypervisor_hostname)
            })
            .map(|i| (i.uuid.clone(), format!("instance-{}", &i.uuid[..8])))
            .collect()
    } else {
        vec![]
    };
    Ok(Hypervisor {
        vcpus: total("VCPU", node.vcpus),
        vcpus_used: used.get("VCPU").copied().unwrap_or(node.vcpus_used),
        memory_mb: total("MEMORY_MB", node.memory_mb),
        memory_mb_used: used
            .get("MEMORY_MB")
            .copied()
            .unwrap_or(node.memory_mb_used),
        local_gb: total("DISK_GB", node.local_gb),
        local_gb_used: used.get("DISK_GB").copied().unwrap_or(node.local_gb_used),
        running_vms: running.get(&node.host).copied().unwrap_or(0),
        servers,
        service,
        node,
    })
}

fn hypervisor_not_found(id: &str) -> Error {
    Error::not_found(format!("Hypervisor with ID {id} could not be found."))
}

/// Hypervisors, optionally whose name contains `pattern`, paged by id
/// marker (2.33: integer id, 2.53: uuid).
pub async fn list_hypervisors(
    app: &App,
    ctx: &Context,
    pattern: Option<&str>,
    marker: Option<&str>,
    limit: Option<i64>,
    with_servers: bool,
) -> Result<Vec<Hypervisor>> {
    app.policy
        .enforce("os_compute_api:os-hypervisors", ctx, Target::default())?;
    let after = match marker {
        Some(m) => Some(
            store::get_node(app.db.pool(), m)
                .await?
                .ok_or_else(|| Error::bad_request(format!("marker [{m}] not found")))?
                .id,
        ),
        None => None,
    };
    let limit = limit.map(|l| l.min(app.config.compute.max_limit));
    let nodes = store::list_nodes(app.db.pool(), pattern, after, limit).await?;
    let running = instances::count_instances_by_host(app.db.pool()).await?;
    let mut out = Vec::new();
    for n in nodes {
        out.push(hypervisor(app, n, with_servers, &running).await?);
    }
    Ok(out)
}

/// One hypervisor by id, uuid or host name.
pub async fn get_hypervisor(
    app: &App,
    ctx: &Context,
    id: &str,
    with_servers: bool,
) -> Result<Hypervisor> {
    app.policy
        .enforce("os_compute_api:os-hypervisors", ctx, Target::default())?;
    let node = store::get_node(app.db.pool(), id)
        .await?
        .ok_or_else(|| hypervisor_not_found(id))?;
    let running = instances::count_instances_by_host(app.db.pool()).await?;
    hypervisor(app, node, with_servers, &running).await
}

// ---- availability zones ------------------------------------------------------------------

/// A zone with its hosts (for admins).
#[derive(Debug, Clone)]
pub struct Zone {
    /// Name.
    pub name: String,
    /// Some service in it is enabled.
    pub available: bool,
    /// Host → services.
    pub hosts: BTreeMap<String, Vec<Service>>,
}

/// The zones of the cloud: each zone of an enabled compute service is
/// available; zones whose services are all disabled are not. `detail`
/// (admins) adds the internal zone and the hosts and services.
pub async fn zones(app: &App, ctx: &Context, detail: bool) -> Result<Vec<Zone>> {
    let rule = if detail {
        "os_compute_api:os-availability-zone:detail"
    } else {
        "os_compute_api:os-availability-zone:list"
    };
    app.policy.enforce(rule, ctx, Target::default())?;
    let services = with_state(app, store::list_services(app.db.pool(), None, None).await?).await?;
    let mut by_zone: BTreeMap<String, Zone> = BTreeMap::new();
    for s in services {
        if !detail && s.zone == INTERNAL_ZONE {
            continue;
        }
        let z = by_zone.entry(s.zone.clone()).or_insert_with(|| Zone {
            name: s.zone.clone(),
            available: false,
            hosts: BTreeMap::new(),
        });
        if !s.row.disabled {
            z.available = true;
        }
        z.hosts.entry(s.row.host.clone()).or_default().push(s);
    }
    Ok(by_zone.into_values().collect())
}

// ---- aggregates ---------------------------------------------------------------------------

fn aggregate_not_found(id: &str) -> Error {
    Error::not_found(format!("Aggregate {id} could not be found."))
}

fn check_az_name(az: &str) -> Result<()> {
    if az.contains(':') {
        return Err(Error::bad_request(
            "Invalid input for field/attribute availability_zone. Availability zone names cannot contain ':'.",
        ));
    }
    Ok(())
}

/// Every aggregate.
pub async fn list_aggregates(app: &App, ctx: &Context) -> Result<Vec<Aggregate>> {
    app.policy
        .enforce("os_compute_api:os-aggregates", ctx, Target::default())?;
    let mut conn = app.db.pool().acquire().await?;
    store::list_aggregates(&mut conn).await
}

/// An aggregate by id (or uuid).
pub async fn get_aggregate(app: &App, ctx: &Context, id: &str) -> Result<Aggregate> {
    app.policy
        .enforce("os_compute_api:os-aggregates", ctx, Target::default())?;
    let mut conn = app.db.pool().acquire().await?;
    store::get_aggregate(&mut conn, id)
        .await?
        .ok_or_else(|| aggregate_not_found(id))
}

/// Creates an aggregate, optionally naming an availability zone.
pub async fn create_aggregate(
    app: &App,
    ctx: &Context,
    name: &str,
    az: Option<&str>,
) -> Result<Aggregate> {
    app.policy
        .enforce("os_compute_api:os-aggregates", ctx, Target::default())?;
    if let Some(z) = az {
        check_az_name(z)?;
    }
    let uuid = uuid::Uuid::new_v4().to_string();
    let id = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            let id = store::insert_aggregate(&mut *tx, &uuid, name)
                .await
                .map_err(|e| {
                    if e.is(Kind::Conflict) {
                        Error::conflict(format!("Aggregate {name} already exists."))
                    } else {
                        e
                    }
                })?;
            if let Some(z) = az {
                let mut m = BTreeMap::new();
                m.insert("availability_zone".to_owned(), Some(z.to_owned()));
                store::set_aggregate_metadata(&mut tx, id, &m).await?;
            }
            tx.commit().await?;
            Ok(id)
        })
        .await?;
    get_aggregate(app, ctx, &id.to_string()).await
}

/// Zones of the other aggregates of `host` (excluding `except`).
async fn other_zones(app: &App, host: &str, except: i64) -> Result<BTreeSet<String>> {
    let mut conn = app.db.pool().acquire().await?;
    Ok(store::aggregates_of_host(&mut conn, host)
        .await?
        .into_iter()
        .filter(|a| a.row.id != except)
        .filter_map(|a| a.availability_zone().map(str::to_owned))
        .collect())
}

/// Renames an aggregate or changes its zone.
pub async fn update_aggregate(
    app: &App,
    ctx: &Context,
    id: &str,
    name: Option<&str>,
    az: Option<Option<&str>>,
) -> Result<Aggregate> {
    let a = get_aggregate(app, ctx, id).await?;
    if let Some(n) = name {
        store::rename_aggregate(app.db.pool(), a.row.id, n)
            .await
            .map_err(|e| {
                if e.is(Kind::Conflict) {
                    Error::conflict(format!("Aggregate {n} already exists."))
                } else {
                    e
                }
            })?;
    }
    if let Some(z) = az {
        let mut m = BTreeMap::new();
        m.insert("availability_zone".to_owned(), z.map(str::to_owned));
        set_metadata(app, ctx, id, &m).await?;
    }
    get_aggregate(app, ctx, id).await
}

/// Deletes an empty aggregate.
pub async fn delete_aggregate(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let a = get_aggregate(app, ctx, id).await?;
    if !a.hosts.is_empty() {
        return Err(Error::bad_request(format!(
            "Cannot remove aggregate {}. Reason: Host aggregate is not empty.",
            a.row.id
        )));
    }
    if !store::delete_aggregate(app.db.pool(), a.row.id).await? {
        return Err(aggregate_not_found(id));
    }
    Ok(())
}

async fn mirror_to_placement(app: &App, host: &str, aggregate_uuid: &str, add: bool) -> Result<()> {
    let nodes = store::nodes_of_host(app.db.pool(), host).await?;
    for n in nodes {
        app.db
            .retry(|| async {
                let mut tx = app.db.begin().await?;
                match placement::lock_provider(&mut tx, &n.uuid, None).await? {
                    placement::Lock::Locked(_) => {}
                    _ => return Ok(()),
                }
                let mut aggs: BTreeSet<String> = placement::provider_aggregates(&mut *tx, &n.uuid)
                    .await?
                    .into_iter()
                    .collect();
                if add {
                    aggs.insert(aggregate_uuid.to_owned());
                } else {
                    aggs.remove(aggregate_uuid);
                }
                placement::replace_provider_aggregates(&mut tx, &n.uuid, &aggs).await?;
                tx.commit().await?;
                Ok(())
            })
            .await?;
    }
    Ok(())
}

/// Adds a compute host: it must exist, and may not end up in two zones.
pub async fn add_host(app: &App, ctx: &Context, id: &str, host: &str) -> Result<Aggregate> {
    let a = get_aggregate(app, ctx, id).await?;
    if store::list_services(app.db.pool(), Some(host), Some("nova-compute"))
        .await?
        .is_empty()
    {
        return Err(Error::not_found(format!(
            "Compute host {host} could not be found."
        )));
    }
    if let Some(z) = a.availability_zone() {
        let others = other_zones(app, host, a.row.id).await?;
        if others.iter().any(|o| o != z) {
            return Err(Error::conflict(format!(
                "Cannot add host to aggregate {}. Reason: One or more hosts already in availability zone(s) {:?}.",
                a.row.id,
                others.into_iter().collect::<Vec<_>>()
            )));
        }
    }
    match store::add_aggregate_host(app.db.pool(), a.row.id, host).await {
        Ok(()) => {}
        Err(e) if e.is(Kind::Conflict) => {
            return Err(Error::conflict(format!(
                "Aggregate {} already has host {host}.",
                a.row.id
            )));
        }
        Err(e) => return Err(e),
    }
    store::touch_aggregate(app.db.pool(), a.row.id).await?;
    mirror_to_placement(app, host, &a.row.uuid, true).await?;
    get_aggregate(app, ctx, id).await
}

/// Removes a host.
pub async fn remove_host(app: &App, ctx: &Context, id: &str, host: &str) -> Result<Aggregate> {
    let a = get_aggregate(app, ctx, id).await?;
    if !store::remove_aggregate_host(app.db.pool(), a.row.id, host).await? {
        return Err(Error::not_found(format!(
            "Aggregate {} has no host {host}.",
            a.row.id
        )));
    }
    store::touch_aggregate(app.db.pool(), a.row.id).await?;
    mirror_to_placement(app, host, &a.row.uuid, false).await?;
    get_aggregate(app, ctx, id).await
}

/// Sets metadata keys (`None` removes one); a zone change may not put a
/// host in two zones.
pub async fn set_metadata(
    app: &App,
    ctx: &Context,
    id: &str,
    meta: &BTreeMap<String, Option<String>>,
) -> Result<Aggregate> {
    let a = get_aggregate(app, ctx, id).await?;
    for (k, v) in meta {
        if k.is_empty()
            || k.chars().count() > 255
            || v.as_ref().is_some_and(|v| v.chars().count() > 255)
        {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute metadata. Value: {k}. Keys and values are 1 to 255 characters."
            )));
        }
    }
    if let Some(Some(z)) = meta.get("availability_zone") {
        check_az_name(z)?;
        for h in &a.hosts {
            let others = other_zones(app, h, a.row.id).await?;
            if others.iter().any(|o| o != z) {
                return Err(Error::bad_request(format!(
                    "Cannot update metadata of aggregate {}. Reason: One or more hosts already in availability zone(s) {:?}.",
                    a.row.id,
                    others.into_iter().collect::<Vec<_>>()
                )));
            }
        }
    }
    let mut conn = app.db.pool().acquire().await?;
    store::set_aggregate_metadata(&mut conn, a.row.id, meta).await?;
    drop(conn);
    store::touch_aggregate(app.db.pool(), a.row.id).await?;
    get_aggregate(app, ctx, id).await
}
