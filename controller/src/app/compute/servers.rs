//! Servers: create (validation, quota, ports, hand-off to the conductor),
//! list and show with everything the views need, update, delete, and the
//! metadata, tags, security groups and instance actions of a server.
//!
//! # Create
//!
//! Everything is validated first (image, flavor, key pair, networks,
//! security groups, server group, zone, metadata, user data, tags). Then one
//! transaction takes the project's quota lock, counts usage, decides how
//! many instances fit between `min_count` and `max_count`, and writes them
//! (`building`/`scheduling`) with their ports (MAC and fixed IPs allocated),
//! security groups, server group membership, metadata, tags and a `create`
//! instance action. After the commit, `schedule_and_build` is cast to the
//! conductor; if the bus refuses it, the instances are deleted again and the
//! request fails with 503, so nothing is left that no one will build.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde_json::{Map, Value};
use sha2::Digest;

use super::common::{self, bool_field, check_name, invalid, project_of, str_field};
use super::states::{task, vm};
use super::{flavors, quotas};
use crate::app::App;
use crate::app::network::{self as net_app, ports as port_app, security_groups as sg_app};
use crate::context::Context;
use crate::db::instances::{
    self as store, Deleted, Expect, Fault, InstanceQuery, InstanceRow, SortKey,
};
use crate::db::{Backend, Timestamp, hosts, network as net_store, server_groups};
use crate::error::{Error, Kind, Result};
use crate::policy::Target;

/// Nova's limit on base64 user data.
pub const MAX_USER_DATA: usize = 65535;

/// Nova's 404 for a server.
pub fn not_found(id: &str) -> Error {
    Error::not_found(format!("Instance {id} could not be found."))
}

/// A fixed IP as `addresses` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    /// The address.
    pub addr: String,
    /// 4 or 6.
    pub version: u8,
    /// The port's MAC.
    pub mac: String,
}

/// A server with what its views need.
#[derive(Debug, Clone)]
pub struct ServerData {
    /// The instance.
    pub row: InstanceRow,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
    /// The newest fault.
    pub fault: Option<Fault>,
    /// Security group names (of the instance, and of its ports).
    pub security_groups: Vec<String>,
    /// Network name → fixed IPs.
    pub addresses: BTreeMap<String, Vec<Address>>,
    /// The server group it is in (0 or 1 uuid).
    pub server_groups: Vec<String>,
    /// `UP`, `DOWN`, `MAINTENANCE`, `UNKNOWN`, or `""` without a host.
    pub host_status: String,
}

impl ServerData {
    /// Nova's `hostId`: SHA-224 of project and host, `""` without a host.
    pub fn host_id(&self) -> String {
        match &self.row.host {
            Some(h) if !h.is_empty() => {
                let mut d = sha2::Sha224::new();
                d.update(self.row.project_id.as_bytes());
                d.update(h.as_bytes());
                hex::encode(d.finalize())
            }
            _ => String::new(),
        }
    }

    /// The API status.
    pub fn status(&self) -> &'static str {
        if self.row.deleted {
            "DELETED"
        } else {
            super::states::status(&self.row.vm_state, self.row.task_state.as_deref())
        }
    }
}

/// Whether `ctx` sees an instance: admins all, others their project's.
pub fn can_see(ctx: &Context, i: &InstanceRow) -> bool {
    ctx.is_admin() || ctx.project_id() == Some(i.project_id.as_str())
}

/// A live instance the caller sees.
pub async fn get_visible(app: &App, ctx: &Context, id: &str) -> Result<InstanceRow> {
    match store::get_instance(app.db.pool(), id).await? {
        Some(i) if can_see(ctx, &i) => Ok(i),
        _ => Err(not_found(id)),
    }
}

/// Service states per host, for `host_status`.
async fn host_statuses(
    app: &App,
    hosts_wanted: &BTreeSet<String>,
) -> Result<BTreeMap<String, String>> {
    if hosts_wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let services = hosts::list_services(app.db.pool(), None, Some("nova-compute")).await?;
    let now = Timestamp::now();
    let down_after = app.config.compute.service_down_time_secs;
    let mut out = BTreeMap::new();
    for h in hosts_wanted {
        let s = services.iter().find(|s| &s.host == h);
        let status = match s {
            None => "UNKNOWN",
            Some(s) if s.forced_down => "DOWN",
            Some(s) if s.disabled => "MAINTENANCE",
            Some(s) if is_up(s, now, down_after) => "UP",
            Some(_) => "UNKNOWN",
        };
        out.insert(h.clone(), status.to_owned());
    }
    Ok(out)
}

/// Whether a service's last heartbeat is recent enough.
pub fn is_up(s: &hosts::ServiceRow, now: Timestamp, down_after_secs: i64) -> bool {
    if s.forced_down {
        return false;
    }
    let last = s.updated_at.unwrap_or(s.created_at);
    (now.0 - last.0).num_seconds() <= down_after_secs
}

/// Loads what the views need for `rows`, in their order.
pub async fn load(app: &App, rows: Vec<InstanceRow>) -> Result<Vec<ServerData>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let uuids: Vec<String> = rows.iter().map(|r| r.uuid.clone()).collect();
    let mut conn = app.db.pool().acquire().await?;
    let mut metadata = store::metadata_of(&mut *conn, &uuids).await?;
    let mut tags = store::tags_of(&mut *conn, &uuids).await?;
    let error_ids: Vec<String> = rows
        .iter()
        .filter(|r| r.vm_state == vm::ERROR || r.deleted)
        .map(|r| r.uuid.clone())
        .collect();
    let mut faults = if error_ids.is_empty() {
        BTreeMap::new()
    } else {
        store::latest_faults(&mut *conn, &error_ids).await?
    };
    let instance_groups = store::security_groups_of(&mut *conn, &uuids).await?;
    let ports = net_store::list_ports(
        &mut conn,
        &net_store::PortQuery {
            bound_to: Some(uuids.clone()),
            ..Default::default()
        },
    )
    .await?;
    // Names of every security group and network involved.
    let mut group_ids: BTreeSet<String> = instance_groups.values().flatten().cloned().collect();
    for p in &ports {
        group_ids.extend(p.security_groups.iter().cloned());
    }
    let group_names: BTreeMap<String, String> = if group_ids.is_empty() {
        BTreeMap::new()
    } else {
        net_store::list_groups(
            &mut conn,
            None,
            None,
            Some(&group_ids.into_iter().collect::<Vec<_>>()),
        )
        .await?
        .into_iter()
        .map(|g| (g.row.id, g.row.name))
        .collect()
    };
    let mut network_names: BTreeMap<String, String> = BTreeMap::new();
    for p in &ports {
        if !network_names.contains_key(&p.row.network_id)
            && let Some(n) = net_store::get_network(&mut *conn, &p.row.network_id).await?
        {
            network_names.insert(n.id, n.name);
        }
    }
    let mut groups_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (u, g) in server_groups::groups_of_instances(&mut *conn, &uuids).await? {
        groups_of.entry(u).or_default().push(g);
    }
    drop(conn);
    let hosts_wanted: BTreeSet<String> = rows.iter().filter_map(|r| r.host.clone()).collect();
    let statuses = host_statuses(app, &hosts_wanted).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut names: Vec<String> = Vec::new();
        let mut push = |id: &String| {
            if let Some(n) = group_names.get(id)
                && !names.contains(n)
            {
                names.push(n.clone());
            }
        };
        for g in instance_groups.get(&row.uuid).into_iter().flatten() {
            push(g);
        }
        let mut addresses: BTreeMap<String, Vec<Address>> = BTreeMap::new();
        for p in ports.iter().filter(|p| p.row.device_id == row.uuid) {
            for g in &p.security_groups {
                push(g);
            }
            let name = network_names
                .get(&p.row.network_id)
                .cloned()
                .unwrap_or_else(|| p.row.network_id.clone());
            let list = addresses.entry(name).or_default();
            for ip in &p.fixed_ips {
                list.push(Address {
                    addr: ip.ip_address.clone(),
                    version: if ip.ip_address.contains(':') { 6 } else { 4 },
                    mac: p.row.mac_address.clone(),
                });
            }
        }
        let host_status = row
            .host
            .as_ref()
            .and_then(|h| statuses.get(h).cloned())
            .unwrap_or_default();
        out.push(ServerData {
            metadata: metadata.remove(&row.uuid).unwrap_or_default(),
            tags: tags.remove(&row.uuid).unwrap_or_default(),
            fault: faults.remove(&row.uuid),
            security_groups: names,
            addresses,
            server_groups: groups_of.remove(&row.uuid).unwrap_or_default(),
            host_status,
            row,
        });
    }
    Ok(out)
}

/// Shows a server.
pub async fn show(app: &App, ctx: &Context, id: &str) -> Result<ServerData> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:servers:show",
        ctx,
        Target::project(&row.project_id),
    )?;
    Ok(load(app, vec![row]).await?.remove(0))
}

// ---- listing ------------------------------------------------------------------------------

/// A page of servers.
#[derive(Debug)]
pub struct Page {
    /// The servers.
    pub servers: Vec<ServerData>,
    /// Only ids and names are needed (`GET /servers`).
    pub brief: Vec<InstanceRow>,
    /// The page size in force (for the next link).
    pub limit: i64,
}

/// Filters non-admins may use, by microversion (Nova's
/// `_get_server_search_options`).
fn allowed_filters(mv: u32) -> Vec<&'static str> {
    let mut v = vec![
        "reservation_id",
        "name",
        "status",
        "image",
        "flavor",
        "ip",
        "changes-since",
        "all_tenants",
    ];
    if mv >= 5 {
        v.push("ip6");
    }
    if mv >= 26 {
        v.extend(["tags", "tags-any", "not-tags", "not-tags-any"]);
    }
    if mv >= 66 {
        v.push("changes-before");
    }
    if mv >= 73 {
        v.push("locked");
    }
    if mv >= 83 {
        v.extend([
            "availability_zone",
            "config_drive",
            "key_name",
            "created_at",
            "launched_at",
            "terminated_at",
            "power_state",
            "task_state",
            "vm_state",
            "progress",
            "user_id",
        ]);
    }
    if mv >= 90 {
        v.push("hostname");
    }
    v
}

/// Every query parameter the server list schema knows (unknown ones are 400
/// from 2.75).
const KNOWN_PARAMS: [&str; 48] = [
    "user_id",
    "project_id",
    "tenant_id",
    "launch_index",
    "image_ref",
    "image",
    "kernel_id",
    "ramdisk_id",
    "hostname",
    "key_name",
    "power_state",
    "vm_state",
    "task_state",
    "host",
    "node",
    "flavor",
    "reservation_id",
    "launched_at",
    "terminated_at",
    "availability_zone",
    "name",
    "display_name",
    "description",
    "display_description",
    "locked_by",
    "uuid",
    "root_device_name",
    "config_drive",
    "access_ip_v4",
    "access_ip_v6",
    "auto_disk_config",
    "progress",
    "sort_key",
    "sort_dir",
    "all_tenants",
    "soft_deleted",
    "deleted",
    "status",
    "changes-since",
    "ip",
    "ip6",
    "created_at",
    "block_device_mapping",
    "services",
    "metadata",
    "pci_devices",
    "numa_topology",
    "limit",
];
const MORE_PARAMS: [&str; 10] = [
    "marker",
    "tags",
    "tags-any",
    "not-tags",
    "not-tags-any",
    "changes-before",
    "locked",
    "info_cache",
    "security_groups",
    "trusted_certs",
];

fn sql_like_literal(s: &str) -> Option<String> {
    // A name with no regular expression syntax is a case-insensitive
    // substring match, done in SQL.
    if s.chars().all(|c| c.is_alphanumeric() || " _-".contains(c)) {
        let escaped = s
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        Some(format!("%{escaped}%"))
    } else {
        None
    }
}

/// Lists servers (Nova's `GET /servers[/detail]`): filters, sorting,
/// paging; other projects' servers only for admins with `all_tenants`.
pub async fn list(
    app: &App,
    ctx: &Context,
    mv: u32,
    params: &[(String, String)],
    detail: bool,
) -> Result<Page> {
    let rule = if detail {
        "os_compute_api:servers:detail"
    } else {
        "os_compute_api:servers:index"
    };
    app.policy.enforce(rule, ctx, Target::default())?;
    let all_filters = app.policy.check(
        "os_compute_api:servers:allow_all_filters",
        ctx,
        Target::default(),
    );
    let allowed = allowed_filters(mv);
    let paging = ["limit", "marker", "sort_key", "sort_dir"];
    if mv >= 75 {
        for (k, v) in params {
            if !KNOWN_PARAMS.contains(&k.as_str()) && !MORE_PARAMS.contains(&k.as_str()) {
                return Err(Error::bad_request(format!(
                    "Invalid input for query parameters {k}. Value: {v}. Additional properties are not allowed ('{k}' was unexpected)"
                )));
            }
        }
    }
    let mut opts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in params {
        if paging.contains(&k.as_str()) || all_filters || allowed.contains(&k.as_str()) {
            opts.entry(k.clone()).or_default().push(v.clone());
        }
    }
    let first = |k: &str| opts.get(k).and_then(|v| v.last()).cloned();
    let mut q = InstanceQuery::default();

    // Whose servers.
    let all_tenants = match opts.get("all_tenants").and_then(|v| v.last()) {
        None => false,
        Some(v) if v.is_empty() => true,
        Some(v) => common::parse_bool(v).ok_or_else(|| {
            Error::bad_request(format!(
                "Invalid input for query parameters all_tenants. Value: {v}."
            ))
        })?,
    };
    if all_tenants {
        let rule = if detail {
            "os_compute_api:servers:detail:get_all_tenants"
        } else {
            "os_compute_api:servers:index:get_all_tenants"
        };
        app.policy.enforce(rule, ctx, Target::default())?;
        q.project_id = first("project_id").or_else(|| first("tenant_id"));
    } else {
        q.project_id = Some(project_of(ctx)?.to_owned());
    }

    // Status.
    if let Some(statuses) = opts.get("status") {
        let mut vms: Vec<String> = vec![];
        let mut tasks: Option<Vec<Option<String>>> = Some(vec![]);
        let mut any_valid = false;
        for s in statuses {
            match super::states::states_of_status(s) {
                Some((v, t)) => {
                    any_valid = true;
                    vms.extend(v.iter().map(|s| s.to_string()));
                    match (t, &mut tasks) {
                        (Some(t), Some(acc)) => acc.extend(t.iter().map(|x| x.map(str::to_owned))),
                        (None, _) => tasks = None,
                        _ => {}
                    }
                }
                None if mv >= 38 => return Err(Error::bad_request("Invalid status value")),
                None => {}
            }
        }
        if !any_valid {
            return Ok(Page {
                servers: vec![],
                brief: vec![],
                limit: app.config.compute.max_limit,
            });
        }
        if vms == [vm::DELETED] {
            if !ctx.is_admin() {
                return Err(Error::forbidden(
                    "Only administrators may list deleted instances",
                ));
            }
            q.deleted = Deleted::Only;
        }
        q.vm_states = Some(vms);
        q.task_states = tasks.filter(|t| !t.is_empty());
    }
    if let Some(v) = opts.get("vm_state") {
        q.vm_states = Some(v.clone());
    }
    if let Some(v) = opts.get("task_state") {
        q.task_states = Some(v.iter().map(|s| Some(s.clone())).collect());
    }
    // Time filters.
    let changes_since = first("changes-since")
        .map(|s| common::parse_time("changes-since", &s))
        .transpose()?;
    let changes_before = first("changes-before")
        .map(|s| common::parse_time("changes-before", &s))
        .transpose()?;
    if let (Some(a), Some(b)) = (changes_since, changes_before)
        && b < a
    {
        return Err(Error::bad_request(
            "The value of changes-since must be less than or equal to changes-before.",
        ));
    }
    q.changes_since = changes_since;
    q.changes_before = changes_before;
    let deleted_asked = first("deleted");
    let wants_deleted = deleted_asked
        .as_deref()
        .is_some_and(|d| common::parse_bool(d).unwrap_or(false));
    if wants_deleted {
        if !ctx.is_admin() {
            return Err(Error::forbidden(
                "Only administrators may list deleted instances",
            ));
        }
        q.deleted = Deleted::Only;
    } else if deleted_asked.is_none()
        && (changes_since.is_some() || changes_before.is_some())
        && q.deleted == Deleted::No
    {
        q.deleted = Deleted::Any;
    }
    if let Some(t) = first("launched_at") {
        q.launched_after = Some(common::parse_time("launched_at", &t)?);
    }
    if let Some(t) = first("terminated_at") {
        q.terminated_before = Some(common::parse_time("terminated_at", &t)?);
    }
    // Plain equality filters.
    q.image_ref = first("image").map(|s| common::id_from_href(&s));
    q.flavor_id = first("flavor").map(|s| common::id_from_href(&s));
    q.reservation_id = first("reservation_id");
    q.host = first("host");
    q.node = first("node");
    q.user_id = first("user_id");
    q.key_name = first("key_name");
    q.availability_zone = first("availability_zone");
    q.hostname = first("hostname");
    q.config_drive = first("config_drive");
    if let Some(u) = opts.get("uuid") {
        q.uuids = Some(u.clone());
    }
    if let Some(l) = first("locked") {
        q.locked = Some(common::parse_bool(&l).ok_or_else(|| {
            Error::bad_request(format!(
                "Invalid input for query parameters locked. Value: {l}."
            ))
        })?);
    }
    let int = |k: &str| -> Result<Option<i64>> {
        first(k)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    Error::bad_request(format!(
                        "Invalid input for query parameters {k}. Value: {v}."
                    ))
                })
            })
            .transpose()
    };
    q.power_state = int("power_state")?;
    q.progress = int("progress")?;
    q.launch_index = int("launch_index")?;
    if mv >= 26 {
        let list = |k: &str| -> Vec<String> {
            first(k)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        q.tags = list("tags");
        q.tags_any = list("tags-any");
        q.not_tags = list("not-tags");
        q.not_tags_any = list("not-tags-any");
    }

    // Sorting.
    let keys = opts.get("sort_key").cloned().unwrap_or_default();
    let dirs = opts.get("sort_dir").cloned().unwrap_or_default();
    for (i, k) in keys.iter().enumerate() {
        let dir = match dirs.get(i).or(dirs.last()).map(String::as_str) {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(d) => {
                return Err(Error::bad_request(format!(
                    "Invalid input for query parameters sort_dir. Value: {d}. '{d}' is not one of ['asc', 'desc']"
                )));
            }
        };
        // Nova ignores keys of joined tables and a few others.
        let Some(key) = SortKey::parse(k) else {
            continue;
        };
        if matches!(key, SortKey::Host | SortKey::Node) && !ctx.is_admin() {
            return Err(Error::forbidden(format!(
                "Only administrators can sort servers by {k}"
            )));
        }
        if key == SortKey::Locked && mv < 73 {
            continue;
        }
        q.sort.push((key, dir));
    }

    // Paging.
    let max = app.config.compute.max_limit;
    let limit = match first("limit") {
        Some(l) => {
            let n: i64 = l
                .parse()
                .map_err(|_| Error::bad_request("limit param must be an integer"))?;
            if n < 0 {
                return Err(Error::bad_request("limit param must be positive"));
            }
            n.min(max)
        }
        None => max,
    };
    q.limit = Some(limit);
    if let Some(m) = first("marker") {
        let marker = store::get_instance_any(app.db.pool(), &m)
            .await?
            .filter(|i| can_see(ctx, i))
            .ok_or_else(|| Error::bad_request(format!("marker [{m}] not found")))?;
        q.marker = Some(marker);
    }

    // Filters done outside SQL narrow the uuids first.
    let mut restrict: Option<BTreeSet<String>> = None;
    if let Some(name) = first("name").or_else(|| first("display_name")) {
        // A plain ASCII substring is matched in SQL (LOWER agrees on ASCII
        // in both databases); a regular expression over the names found.
        match sql_like_literal(&name).filter(|_| name.is_ascii()) {
            Some(pattern) => q.name_like = Some(pattern),
            None => {
                let re = regex::RegexBuilder::new(&name)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|_| {
                        Error::bad_request(format!("Invalid regular expression: {name}"))
                    })?;
                let mut base = q.clone();
                base.limit = None;
                base.marker = None;
                base.sort = vec![];
                let names = store::list_names(app.db.pool(), &base).await?;
                restrict = Some(
                    names
                        .into_iter()
                        .filter(|(_, n)| re.is_match(n))
                        .map(|(u, _)| u)
                        .collect(),
                );
            }
        }
    }
    for key in ["ip", "ip6"] {
        if let Some(pattern) = first(key) {
            let re = regex::Regex::new(&pattern).map_err(|_| {
                Error::bad_request(format!("Invalid regular expression: {pattern}"))
            })?;
            let mut conn = app.db.pool().acquire().await?;
            let ports = net_store::list_ports(
                &mut conn,
                &net_store::PortQuery {
                    project_id: q.project_id.clone(),
                    ..Default::default()
                },
            )
            .await?;
            let matched: BTreeSet<String> = ports
                .into_iter()
                .filter(|p| {
                    p.fixed_ips.iter().any(|i| {
                        (key == "ip") != i.ip_address.contains(':') && re.is_match(&i.ip_address)
                    })
                })
                .map(|p| p.row.device_id)
                .collect();
            restrict = Some(match restrict {
                Some(r) => r.intersection(&matched).cloned().collect(),
                None => matched,
            });
        }
    }
    if let Some(r) = restrict {
        q.restrict_to = Some(r.into_iter().collect());
    }
    let backend: Backend = app.db.backend();
    let rows = store::list_instances(app.db.pool(), backend, &q).await?;
    if detail {
        Ok(Page {
            servers: load(app, rows).await?,
            brief: vec![],
            limit,
        })
    } else {
        Ok(Page {
            servers: vec![],
            brief: rows,
            limit,
        })
    }
}

// ---- create ---------------------------------------------------------------------------------

/// What a create request asked for, once validated.
#[derive(Debug, Default)]
struct Plan {
    name: String,
    description: Option<String>,
    hostname: Option<String>,
    image_id: String,
    kernel_id: Option<String>,
    ramdisk_id: Option<String>,
    key: Option<(String, String)>,
    metadata: BTreeMap<String, String>,
    user_data: Option<String>,
    config_drive: bool,
    access_ip_v4: Option<String>,
    access_ip_v6: Option<String>,
    disk_config: String,
    tags: Vec<String>,
    availability_zone: Option<String>,
    requested_az: Option<String>,
    forced_host: Option<String>,
    forced_node: Option<String>,
    hints: Map<String, Value>,
    group: Option<(i64, String)>,
    security_groups: Vec<String>,
    nics: Vec<Nic>,
    min: i64,
    max: i64,
    admin_pass: String,
}

#[derive(Debug, Clone)]
enum Nic {
    Network {
        network: Box<net_store::NetworkRow>,
        fixed_ip: Option<String>,
    },
    Port(String),
}

/// What [`create`] made.
#[derive(Debug)]
pub struct Created {
    /// The instances, in launch order.
    pub instances: Vec<InstanceRow>,
    /// Their reservation id.
    pub reservation_id: String,
    /// The admin password (given or generated).
    pub admin_pass: String,
    /// The security groups as requested (for the response).
    pub security_groups: Vec<String>,
    /// `return_reservation_id` was asked.
    pub return_reservation_id: bool,
}

fn sanitize_hostname(name: &str) -> String {
    let mut s: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-').chars().take(63).collect::<String>();
    let s = s.trim_end_matches('-').to_owned();
    if s.is_empty() { "server".into() } else { s }
}

fn valid_hostname(h: &str, fqdn: bool) -> bool {
    let labels: Vec<&str> = h.split('.').collect();
    if !fqdn && labels.len() > 1 {
        return false;
    }
    h.len() <= 255
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn random_password() -> String {
    const CHARS: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter()
        .map(|x| CHARS[*x as usize % CHARS.len()] as char)
        .collect()
}

fn reservation_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    format!(
        "r-{}",
        b.iter()
            .map(|x| CHARS[*x as usize % CHARS.len()] as char)
            .collect::<String>()
    )
}

/// Validates tags (2.26): at most 50, each 1–60 characters without `/` or `,`.
pub fn check_tags(tags: &[String]) -> Result<()> {
    if tags.len() > 50 {
        return Err(Error::bad_request(
            "Invalid input for field/attribute tags. The number of tags exceeded the per-server limit 50",
        ));
    }
    for t in tags {
        if t.is_empty() || t.chars().count() > 60 || t.contains('/') || t.contains(',') {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute tags. Value: {t}. '{t}' does not match '^[^,/]*$' or is not 1 to 60 characters long"
            )));
        }
    }
    Ok(())
}

/// Validates metadata: keys 1–255 characters, values ≤ 255, strings.
pub fn parse_metadata(field: &str, v: &Value) -> Result<BTreeMap<String, String>> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(field, v, &format!("{v} is not of type 'object'")))?;
    let mut out = BTreeMap::new();
    for (k, val) in obj {
        if k.is_empty() || k.chars().count() > 255 {
            return Err(invalid(
                field,
                v,
                &format!("'{k}' does not match any of the regexes: '^[a-zA-Z0-9-_:. /]{{1,255}}$'"),
            ));
        }
        let s = val.as_str().ok_or_else(|| {
            invalid(
                &format!("{field}/{k}"),
                val,
                &format!("{val} is not of type 'string'"),
            )
        })?;
        if s.chars().count() > 255 {
            return Err(invalid(&format!("{field}/{k}"), val, "is too long"));
        }
        out.insert(k.clone(), s.to_owned());
    }
    Ok(out)
}

async fn zones(app: &App) -> Result<BTreeSet<String>> {
    let mut z: BTreeSet<String> = hosts::host_zones(app.db.pool())
        .await?
        .into_values()
        .collect();
    z.insert(app.config.compute.default_availability_zone.clone());
    Ok(z)
}

async fn plan(
    app: &App,
    ctx: &Context,
    mv: u32,
    body: &Map<String, Value>,
) -> Result<(Plan, crate::db::flavors::Flavor)> {
    let project = project_of(ctx)?.to_owned();
    let server = body
        .get("server")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Error::bad_request(
                "Invalid input for field/attribute server. 'server' is a required property",
            )
        })?;
    let mut p = Plan {
        disk_config: "MANUAL".into(),
        ..Default::default()
    };
    p.name = check_name(
        "name",
        server.get("name").ok_or_else(|| {
            Error::bad_request(
                "Invalid input for field/attribute server. 'name' is a required property",
            )
        })?,
    )?;
    if let Some(d) = server.get("description") {
        if mv < 19 {
            return Err(unexpected("server", "description"));
        }
        p.description = match d {
            Value::Null => None,
            v => Some(str_field("description", v, 0, 255)?),
        };
    } else if mv < 19 {
        p.description = Some(p.name.clone());
    }
    if let Some(h) = server.get("hostname") {
        if mv < 90 {
            return Err(unexpected("server", "hostname"));
        }
        let h = str_field("hostname", h, 1, 255)?;
        if !valid_hostname(&h, mv >= 94) {
            return Err(invalid(
                "hostname",
                &Value::String(h.clone()),
                "is not a valid hostname",
            ));
        }
        p.hostname = Some(h);
    }
    for k in server.keys() {
        let known = [
            "name",
            "imageRef",
            "flavorRef",
            "adminPass",
            "metadata",
            "networks",
            "personality",
            "key_name",
            "user_data",
            "security_groups",
            "availability_zone",
            "config_drive",
            "min_count",
            "max_count",
            "return_reservation_id",
            "block_device_mapping",
            "block_device_mapping_v2",
            "accessIPv4",
            "accessIPv6",
            "OS-DCF:diskConfig",
            "description",
            "tags",
            "trusted_image_certificates",
            "host",
            "hypervisor_hostname",
            "hostname",
        ];
        if !known.contains(&k.as_str()) {
            return Err(unexpected("server", k));
        }
    }
    if server.contains_key("personality") && mv >= 57 {
        return Err(unexpected("server", "personality"));
    }
    if server
        .get("personality")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(Error::bad_request(
            "Personality files are not supported by Mica; use user_data or config drive metadata.",
        ));
    }
    if server.contains_key("trusted_image_certificates") {
        if mv < 63 {
            return Err(unexpected("server", "trusted_image_certificates"));
        }
        if server
            .get("trusted_image_certificates")
            .is_some_and(|v| !v.is_null())
        {
            return Err(Error::bad_request(
                "Image signature certificate validation is not supported by Mica.",
            ));
        }
    }
    // Counts.
    let max_req = app.config.compute.max_instances_per_request;
    p.min = match server.get("min_count") {
        Some(v) => common::int_field("min_count", v, 1, max_req)?,
        None => 1,
    };
    p.max = match server.get("max_count") {
        Some(v) => common::int_field("max_count", v, 1, max_req)?,
        None => p.min,
    };
    if p.min > p.max {
        return Err(Error::bad_request("min_count must be <= max_count"));
    }
    if p.hostname.is_some() && p.max > 1 {
        return Err(Error::bad_request(
            "Unable to allocate a single hostname to multiple instances",
        ));
    }
    if let Some(v) = server.get("return_reservation_id") {
        bool_field("return_reservation_id", v)?;
    }
    // Image: imageRef, or an image source in the block device mappings.
    let bdms = server.get("block_device_mapping_v2");
    if server.contains_key("block_device_mapping") && bdms.is_some() {
        return Err(Error::bad_request(
            "Using different block_device_mapping syntaxes is not allowed in the same request.",
        ));
    }
    if server
        .get("block_device_mapping")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(Error::bad_request(
            "Block device mapping is not supported by Mica: volumes do not exist; boot from an image.",
        ));
    }
    let image_ref = match server.get("imageRef") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(common::id_from_href(s)),
        Some(v) => return Err(invalid("imageRef", v, "is not of type 'string'")),
    };
    let mut bdm_image: Option<String> = None;
    if let Some(list) = bdms {
        let list = list
            .as_array()
            .ok_or_else(|| invalid("block_device_mapping_v2", list, "is not of type 'array'"))?;
        for b in list {
            let o = b
                .as_object()
                .ok_or_else(|| invalid("block_device_mapping_v2", b, "is not of type 'object'"))?;
            let source = o.get("source_type").and_then(Value::as_str).unwrap_or("");
            let dest = o
                .get("destination_type")
                .and_then(Value::as_str)
                .unwrap_or("local");
            let boot_index = o.get("boot_index").map(|v| match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            });
            if !["image", "volume", "snapshot", "blank"].contains(&source) {
                return Err(Error::bad_request(format!(
                    "Invalid input for field/attribute source_type. Value: {source}."
                )));
            }
            if !["local", "volume"].contains(&dest) {
                return Err(Error::bad_request(format!(
                    "Invalid input for field/attribute destination_type. Value: {dest}."
                )));
            }
            if source != "image" || dest != "local" || boot_index.flatten() != Some(0) {
                return Err(Error::bad_request(
                    "Block device mapping is not supported by Mica beyond the root disk: only an image source with a local destination and boot_index 0.",
                ));
            }
            let uuid = o.get("uuid").and_then(Value::as_str).ok_or_else(|| {
                Error::bad_request(
                    "Block Device Mapping is Invalid: uuid is required for an image source.",
                )
            })?;
            bdm_image = Some(uuid.to_owned());
        }
    }
    let image_id = match (&image_ref, &bdm_image) {
        (Some(i), Some(b)) if i != b => {
            return Err(Error::bad_request(
                "Block Device Mapping is Invalid: the image of the root disk differs from imageRef.",
            ));
        }
        (Some(i), _) => i.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) => return Err(Error::bad_request("Missing imageRef attribute")),
    };
    let image = match crate::app::images::get_image(app, ctx, &image_id).await {
        Ok(i) => i,
        Err(e) if e.is(Kind::NotFound) || e.is(Kind::Forbidden) => {
            return Err(Error::bad_request("Can not find requested image"));
        }
        Err(e) => return Err(e),
    };
    if image.row.status != "active" {
        return Err(Error::bad_request(format!(
            "Image {image_id} is not active."
        )));
    }
    p.image_id = image.row.id.clone();
    p.kernel_id = image.properties.get("kernel_id").cloned();
    p.ramdisk_id = image.properties.get("ramdisk_id").cloned();
    // Flavor.
    let flavor_ref = server.get("flavorRef").ok_or_else(|| {
        Error::bad_request(
            "Invalid input for field/attribute server. 'flavorRef' is a required property",
        )
    })?;
    let flavor_id = match flavor_ref {
        Value::String(s) => common::id_from_href(s),
        Value::Number(n) => n.to_string(),
        v => {
            return Err(invalid(
                "flavorRef",
                v,
                "is not of type 'string', 'integer'",
            ));
        }
    };
    let flavor = match flavors::get(app, ctx, &flavor_id).await {
        Ok(f) if !f.row.disabled => f,
        Ok(_) | Err(_) => {
            return Err(Error::bad_request(format!(
                "Flavor {flavor_id} could not be found."
            )));
        }
    };
    let image_bytes = image.row.virtual_size.or(image.row.size).unwrap_or(0);
    if flavor.row.memory_mb < image.row.min_ram {
        return Err(Error::bad_request(
            "Flavor's memory is too small for requested image.",
        ));
    }
    if flavor.row.root_gb > 0 {
        if flavor.row.root_gb < image.row.min_disk {
            return Err(Error::bad_request(
                "Flavor's disk is too small for requested image.",
            ));
        }
        let disk_bytes = flavor.row.root_gb << 30;
        if image_bytes > disk_bytes {
            return Err(Error::bad_request(format!(
                "Flavor's disk is too small for requested image. Flavor disk is {disk_bytes} bytes, image is {image_bytes} bytes."
            )));
        }
    }
    // Key pair.
    if let Some(k) = server.get("key_name").filter(|v| !v.is_null()) {
        let k = str_field("key_name", k, 1, 255)?;
        match crate::db::flavors::get_key_pair(app.db.pool(), &ctx.user_id, &k).await? {
            Some(kp) => p.key = Some((kp.name, kp.public_key)),
            None => return Err(Error::bad_request("Invalid key_name provided.")),
        }
    }
    // Metadata, user data, tags and the rest.
    if let Some(m) = server.get("metadata") {
        p.metadata = parse_metadata("metadata", m)?;
    }
    if let Some(u) = server.get("user_data").filter(|v| !v.is_null()) {
        let s = u
            .as_str()
            .ok_or_else(|| invalid("user_data", u, "is not of type 'string'"))?;
        if s.len() > MAX_USER_DATA {
            return Err(Error::bad_request(format!(
                "User data too large. User data must be no larger than {MAX_USER_DATA} bytes once base64 encoded. Your data is {} bytes",
                s.len()
            )));
        }
        let cleaned: String = s.split_whitespace().collect();
        if base64::engine::general_purpose::STANDARD
            .decode(&cleaned)
            .is_err()
        {
            return Err(Error::bad_request("User data needs to be valid base 64."));
        }
        p.user_data = Some(s.to_owned());
    }
    if let Some(c) = server.get("config_drive").filter(|v| !v.is_null()) {
        p.config_drive = match c {
            Value::String(s) if s.is_empty() => false,
            v => bool_field("config_drive", v)
                .map_err(|_| Error::bad_request("Invalid config_drive provided."))?,
        };
    }
    for (field, slot, version) in [
        ("accessIPv4", &mut p.access_ip_v4, 4u8),
        ("accessIPv6", &mut p.access_ip_v6, 6),
    ] {
        if let Some(v) = server.get(field).filter(|v| !v.is_null()) {
            let s = v.as_str().unwrap_or_default();
            match crate::app::network::addr::parse_ip(s) {
                Some((_, ver)) if ver == version => *slot = Some(s.to_owned()),
                _ if s.is_empty() => {}
                _ => return Err(invalid(field, v, &format!("'{s}' is not a 'ipv{version}'"))),
            }
        }
    }
    if let Some(d) = server.get("OS-DCF:diskConfig") {
        p.disk_config = match d.as_str() {
            Some("AUTO") => "AUTO".into(),
            Some("MANUAL") => "MANUAL".into(),
            _ => {
                return Err(invalid(
                    "OS-DCF:diskConfig",
                    d,
                    "is not one of ['AUTO', 'MANUAL']",
                ));
            }
        };
    }
    if let Some(t) = server.get("tags") {
        if mv < 52 {
            return Err(unexpected("server", "tags"));
        }
        let tags: Vec<String> = t
            .as_array()
            .ok_or_else(|| invalid("tags", t, "is not of type 'array'"))?
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("tags", x, "is not of type 'string'"))
            })
            .collect::<Result<_>>()?;
        check_tags(&tags)?;
        let mut dedup = Vec::new();
        for t in tags {
            if !dedup.contains(&t) {
                dedup.push(t);
            }
        }
        p.tags = dedup;
    }
    p.admin_pass = match server.get("adminPass") {
        Some(Value::String(s)) => s.clone(),
        Some(v) if !v.is_null() => return Err(invalid("adminPass", v, "is not of type 'string'")),
        _ => random_password(),
    };
    // Availability zone, forced host (admins).
    if let Some(z) = server.get("availability_zone").filter(|v| !v.is_null()) {
        let z = str_field("availability_zone", z, 1, 255)?;
        let mut parts = z.splitn(3, ':');
        let zone = parts.next().unwrap_or_default().to_owned();
        let host = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
        let node = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
        if host.is_some() || node.is_some() {
            app.policy.enforce(
                "os_compute_api:servers:create:forced_host",
                ctx,
                Target::project(&project),
            )?;
        }
        if !zone.is_empty() {
            if !zones(app).await?.contains(&zone) {
                return Err(Error::bad_request(format!(
                    "The requested availability zone is not available: {zone}"
                )));
            }
            p.availability_zone = Some(zone.clone());
            p.requested_az = Some(zone);
        }
        p.forced_host = host;
        p.forced_node = node;
    }
    if server.contains_key("host") || server.contains_key("hypervisor_hostname") {
        if mv < 74 {
            return Err(unexpected("server", "host"));
        }
        app.policy.enforce(
            "os_compute_api:servers:create:requested_destination",
            ctx,
            Target::project(&project),
        )?;
        if p.forced_host.is_some() || p.forced_node.is_some() {
            return Err(Error::bad_request(
                "One mechanism with host and/or hypervisor_hostname and another mechanism with zone:host:node are mutually exclusive.",
            ));
        }
        let host = server
            .get("host")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let node = server
            .get("hypervisor_hostname")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(h) = &host
            && hosts::list_services(app.db.pool(), Some(h), Some("nova-compute"))
                .await?
                .is_empty()
        {
            return Err(Error::bad_request(format!(
                "Compute host {h} could not be found."
            )));
        }
        if let Some(n) = &node
            && hosts::get_node(app.db.pool(), n).await?.is_none()
        {
            return Err(Error::bad_request(format!(
                "Compute host {n} could not be found."
            )));
        }
        p.forced_host = host;
        p.forced_node = node;
    }
    // Scheduler hints and the server group.
    let hints = body
        .get("os:scheduler_hints")
        .or_else(|| body.get("OS-SCH-HNT:scheduler_hints"));
    if let Some(h) = hints {
        p.hints = h
            .as_object()
            .ok_or_else(|| invalid("os:scheduler_hints", h, "is not of type 'object'"))?
            .clone();
    }
    if let Some(g) = p.hints.get("group") {
        let g = g
            .as_str()
            .ok_or_else(|| invalid("group", g, "is not of type 'string'"))?;
        let mut conn = app.db.pool().acquire().await?;
        let group = server_groups::get_group(&mut conn, g)
            .await?
            .filter(|grp| ctx.is_admin() || grp.row.project_id == project)
            .ok_or_else(|| Error::bad_request(format!("Instance group {g} could not be found.")))?;
        p.group = Some((group.row.id, group.row.uuid));
    }
    // Security groups (names or ids).
    let requested_groups: Vec<String> = match server.get("security_groups") {
        None => vec![],
        Some(v) => v
            .as_array()
            .ok_or_else(|| invalid("security_groups", v, "is not of type 'array'"))?
            .iter()
            .filter_map(|g| g.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect(),
    };
    let wanted = if requested_groups.is_empty() {
        vec![sg_app::DEFAULT_NAME.to_owned()]
    } else {
        requested_groups
    };
    for name in &wanted {
        let g = match sg_app::resolve_name_or_id(app, &project, name).await {
            Ok(g) => g,
            Err(e) if e.is(Kind::NotFound) => {
                return Err(Error::bad_request(format!(
                    "Security group {name} not found."
                )));
            }
            Err(e) => return Err(e),
        };
        if !p.security_groups.contains(&g.id) {
            p.security_groups.push(g.id);
        }
    }
    // Networks.
    p.nics = plan_networks(app, ctx, mv, server.get("networks"), p.max).await?;
    Ok((p, flavor))
}

fn unexpected(obj: &str, key: &str) -> Error {
    Error::bad_request(format!(
        "Invalid input for field/attribute {obj}. Additional properties are not allowed ('{key}' was unexpected)"
    ))
}

async fn plan_networks(
    app: &App,
    ctx: &Context,
    mv: u32,
    networks: Option<&Value>,
    max: i64,
) -> Result<Vec<Nic>> {
    let project = project_of(ctx)?;
    let available = || async {
        let visible = net_store::list_networks(app.db.pool(), Some(project), None).await?;
        Ok::<_, Error>(
            visible
                .into_iter()
                .filter(|n| !n.external)
                .collect::<Vec<_>>(),
        )
    };
    let auto = |nets: Vec<net_store::NetworkRow>, strict: bool| -> Result<Vec<Nic>> {
        match nets.len() {
            0 if strict => Err(Error::bad_request(format!(
                "Unable to automatically allocate a network for project {project}"
            ))),
            0 => Ok(vec![]),
            1 => Ok(vec![Nic::Network {
                network: Box::new(nets.into_iter().next().expect("one")),
                fixed_ip: None,
            }]),
            _ => Err(Error::conflict(
                "More than one possible network found. Specify network ID(s) to select which one(s) to connect to.",
            )),
        }
    };
    match networks {
        None if mv >= 37 => Err(Error::bad_request(
            "Invalid input for field/attribute server. 'networks' is a required property",
        )),
        None | Some(Value::Null) => auto(available().await?, false),
        Some(Value::String(s)) if mv >= 37 && s == "none" => Ok(vec![]),
        Some(Value::String(s)) if mv >= 37 && s == "auto" => auto(available().await?, true),
        Some(Value::Array(list)) if list.is_empty() && mv < 37 => auto(available().await?, false),
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            let mut ports_seen = BTreeSet::new();
            for item in list {
                let o = item
                    .as_object()
                    .ok_or_else(|| Error::bad_request("Bad networks format"))?;
                for k in o.keys() {
                    if !["uuid", "port", "fixed_ip", "tag"].contains(&k.as_str()) {
                        return Err(unexpected("networks", k));
                    }
                }
                let fixed_ip = o.get("fixed_ip").and_then(Value::as_str).map(str::to_owned);
                if let Some(ip) = &fixed_ip
                    && crate::app::network::addr::parse_ip(ip).is_none()
                {
                    return Err(invalid(
                        "fixed_ip",
                        &Value::String(ip.clone()),
                        "is not a valid IP address",
                    ));
                }
                if let Some(port) = o
                    .get("port")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    if !ports_seen.insert(port.to_owned()) {
                        return Err(Error::bad_request(format!(
                            "Port ID '{port}' was specified twice: you cannot attach a port multiple times."
                        )));
                    }
                    if let Some(ip) = &fixed_ip {
                        return Err(Error::bad_request(format!(
                            "Specified Fixed IP '{ip}' cannot be used with port '{port}': the two cannot be specified together."
                        )));
                    }
                    if max > 1 {
                        return Err(Error::bad_request(
                            "Failed to launch instances: Unable to launch multiple instances with a single configured port ID. Please launch your instance one by one with different ports.",
                        ));
                    }
                    let mut conn = app.db.pool().acquire().await?;
                    let p = net_store::get_port(&mut conn, port)
                        .await?
                        .filter(|p| ctx.is_admin() || p.row.project_id == project)
                        .ok_or_else(|| {
                            Error::bad_request(format!("Port id {port} could not be found."))
                        })?;
                    // Nova binds a port only into a server of the port's
                    // own project, whoever asks.
                    if p.row.project_id != project {
                        return Err(Error::bad_request(format!(
                            "Port {port} not usable for a server of project {project}: it belongs to another project."
                        )));
                    }
                    if !p.row.device_id.is_empty() || !p.row.bound_instance.is_empty() {
                        return Err(Error::conflict(format!("Port {port} is still in use.")));
                    }
                    out.push(Nic::Port(p.row.id));
                    continue;
                }
                let uuid = o
                    .get("uuid")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::bad_request("Bad network format: missing 'uuid'"))?;
                if !common::is_uuid_like(uuid) {
                    return Err(Error::bad_request(format!(
                        "Bad networks format: network uuid is not in proper format ({uuid})"
                    )));
                }
                if fixed_ip.is_some() && max > 1 {
                    return Err(Error::bad_request(
                        "Failed to launch instances: max_count cannot be greater than 1 if an fixed_ip is specified.",
                    ));
                }
                let n = net_store::get_network(app.db.pool(), uuid)
                    .await?
                    .filter(|n| net_app::can_see_network(ctx, n))
                    .ok_or_else(|| {
                        Error::bad_request(format!("Network {uuid} could not be found."))
                    })?;
                out.push(Nic::Network {
                    network: Box::new(n),
                    fixed_ip,
                });
            }
            Ok(out)
        }
        Some(v) => Err(invalid(
            "networks",
            v,
            if mv >= 37 {
                "is not valid under any of the given schemas ('auto', 'none' or a list)"
            } else {
                "is not of type 'array'"
            },
        )),
    }
}

/// Creates servers (`POST /servers`); see the module doc.
pub async fn create(
    app: &App,
    ctx: &Context,
    mv: u32,
    request_id: &str,
    body: &Map<String, Value>,
) -> Result<Created> {
    let project = project_of(ctx)?.to_owned();
    app.policy.enforce(
        "os_compute_api:servers:create",
        ctx,
        Target::project(&project),
    )?;
    let (p, flavor) = plan(app, ctx, mv, body).await?;
    let return_reservation_id = body
        .get("server")
        .and_then(|s| s.get("return_reservation_id"))
        .map(|v| bool_field("return_reservation_id", v))
        .transpose()?
        .unwrap_or(false);
    let requested_groups: Vec<String> = body
        .get("server")
        .and_then(|s| s.get("security_groups"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|g| g.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let resv = reservation_id();
    let base_mac = app.config.network.base_mac.clone();
    let default_az = app.config.compute.default_availability_zone.clone();
    let specs_json = serde_json::to_string(&flavor.extra_specs).expect("maps serialize");
    let hints_json = serde_json::to_string(&p.hints).expect("maps serialize");
    let instances = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            crate::db::quotas::lock_project(&mut tx, &project).await?;
            quotas::check_metadata(&mut tx, app, &project, &ctx.user_id, p.metadata.len()).await?;
            let count = quotas::check_instances(
                &mut tx,
                app,
                &project,
                &ctx.user_id,
                flavor.row.vcpus,
                flavor.row.memory_mb,
                p.min,
                p.max,
            )
            .await?;
            if let Some((gid, _)) = &p.group {
                quotas::check_group_members(&mut tx, app, &project, &ctx.user_id, *gid, count)
                    .await?;
            }
            let new_ports = p
                .nics
                .iter()
                .filter(|n| matches!(n, Nic::Network { .. }))
                .count() as i64;
            if new_ports > 0 {
                crate::app::network::quotas::check(
                    &mut tx,
                    app,
                    &project,
                    "port",
                    new_ports * count,
                )
                .await
                .map_err(|e| {
                    if e.is(Kind::Conflict) {
                        Error::forbidden(e.message)
                    } else {
                        e
                    }
                })?;
            }
            let now = Timestamp::now();
            let mut made = Vec::new();
            for n in 0..count {
                let uuid = uuid::Uuid::new_v4().to_string();
                let name = if count > 1 {
                    format!("{}-{}", p.name, n + 1)
                } else {
                    p.name.clone()
                };
                let hostname = p
                    .hostname
                    .clone()
                    .unwrap_or_else(|| sanitize_hostname(&name));
                let row = InstanceRow {
                    uuid: uuid.clone(),
                    project_id: project.clone(),
                    user_id: ctx.user_id.clone(),
                    display_name: name,
                    display_description: p.description.clone(),
                    hostname,
                    reservation_id: resv.clone(),
                    launch_index: n,
                    image_ref: p.image_id.clone(),
                    kernel_id: p.kernel_id.clone(),
                    ramdisk_id: p.ramdisk_id.clone(),
                    flavor_id: flavor.row.id.clone(),
                    flavor_name: flavor.row.name.clone(),
                    vcpus: flavor.row.vcpus,
                    memory_mb: flavor.row.memory_mb,
                    root_gb: flavor.row.root_gb,
                    ephemeral_gb: flavor.row.ephemeral_gb,
                    swap_mb: flavor.row.swap_mb,
                    flavor_extra_specs: specs_json.clone(),
                    old_flavor: None,
                    new_flavor: None,
                    key_name: p.key.as_ref().map(|k| k.0.clone()),
                    key_data: p.key.as_ref().map(|k| k.1.clone()),
                    user_data: p.user_data.clone(),
                    config_drive: if p.config_drive {
                        "True".into()
                    } else {
                        String::new()
                    },
                    disk_config: p.disk_config.clone(),
                    access_ip_v4: p.access_ip_v4.clone(),
                    access_ip_v6: p.access_ip_v6.clone(),
                    root_device_name: None,
                    availability_zone: p
                        .availability_zone
                        .clone()
                        .or_else(|| Some(default_az.clone())),
                    requested_availability_zone: p.requested_az.clone(),
                    forced_host: p.forced_host.clone(),
                    forced_node: p.forced_node.clone(),
                    scheduler_hints: hints_json.clone(),
                    host: None,
                    node: None,
                    launched_on: None,
                    vmm_id: None,
                    vm_state: vm::BUILDING.into(),
                    task_state: Some(task::SCHEDULING.into()),
                    power_state: 0,
                    progress: 0,
                    locked: false,
                    locked_by: None,
                    locked_reason: None,
                    launched_at: None,
                    terminated_at: None,
                    created_at: now,
                    updated_at: now,
                    deleted: false,
                    deleted_at: None,
                    generation: 1,
                };
                store::insert_instance(&mut tx, &row).await?;
                store::merge_metadata(&mut tx, &uuid, &p.metadata).await?;
                for t in &p.tags {
                    store::add_tag(&mut *tx, &uuid, t).await?;
                }
                for g in &p.security_groups {
                    store::add_security_group(&mut *tx, &uuid, g).await?;
                }
                if let Some((gid, _)) = &p.group {
                    server_groups::add_member(&mut *tx, *gid, &uuid).await?;
                }
                let owner = format!(
                    "compute:{}",
                    row.availability_zone.clone().unwrap_or_default()
                );
                for nic in &p.nics {
                    match nic {
                        Nic::Network { network, fixed_ip } => {
                            let req = port_app::PortRequest {
                                network: Some((**network).clone()),
                                project_id: project.clone(),
                                fixed_ips_given: fixed_ip.is_some(),
                                fixed_ips: fixed_ip
                                    .iter()
                                    .map(|ip| port_app::FixedIpRequest {
                                        subnet_id: None,
                                        ip_address: Some(ip.clone()),
                                    })
                                    .collect(),
                                device_id: uuid.clone(),
                                device_owner: owner.clone(),
                                security_groups: p.security_groups.clone(),
                                admin_state_up: true,
                                delete_with_device: true,
                                bound_instance: uuid.clone(),
                                ..Default::default()
                            };
                            port_app::allocate_port(&mut tx, &base_mac, &req)
                                .await
                                .map_err(|e| {
                                    if e.is(Kind::Conflict) && e.message.starts_with("IP address") {
                                        Error::bad_request(format!(
                                            "Fixed IP address {} is already in use.",
                                            fixed_ip.clone().unwrap_or_default()
                                        ))
                                    } else {
                                        e
                                    }
                                })?;
                        }
                        Nic::Port(id) => {
                            let claimed =
                                net_store::claim_port(&mut *tx, id, &project, &uuid, &owner)
                                    .await?;
                            if !claimed {
                                return Err(Error::conflict(format!("Port {id} is still in use.")));
                            }
                        }
                    }
                }
                store::start_action(&mut tx, &uuid, request_id, "create", &project, &ctx.user_id)
                    .await?;
                made.push(row);
            }
            tx.commit().await?;
            Ok(made)
        })
        .await?;
    // Hand the build to the conductor.
    let uuids: Vec<String> = instances.iter().map(|i| i.uuid.clone()).collect();
    let cast = async {
        let rpc = app.rpc()?.with_request_id(request_id);
        rpc.cast_method::<mica_rpc::conductor::ScheduleAndBuild>(
            mica_rpc::Topic::conductor(),
            &mica_rpc::conductor::ScheduleAndBuildRequest {
                request_id: request_id.to_owned(),
                instance_uuids: uuids.clone(),
            },
        )
        .await
        .map_err(|e| {
            Error::new(
                Kind::ServiceUnavailable,
                "The conductor could not be reached; try again later.",
            )
            .with_source(e)
        })
    };
    if let Err(e) = cast.await {
        for u in &uuids {
            let _ = super::lifecycle::finish_delete(app, u, &Expect::default()).await;
        }
        return Err(e);
    }
    let groups_shown = if requested_groups.is_empty() {
        vec![sg_app::DEFAULT_NAME.to_owned()]
    } else {
        requested_groups
    };
    Ok(Created {
        instances,
        reservation_id: resv,
        admin_pass: p.admin_pass,
        security_groups: groups_shown,
        return_reservation_id,
    })
}

// ---- update and delete ----------------------------------------------------------------------

/// Updates a server's name, description (2.19), host name (2.90), access
/// IPs and disk config.
pub async fn update(
    app: &App,
    ctx: &Context,
    mv: u32,
    id: &str,
    body: &Map<String, Value>,
) -> Result<ServerData> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:servers:update",
        ctx,
        Target::project(&row.project_id),
    )?;
    let server = body
        .get("server")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Error::bad_request(
                "Invalid input for field/attribute server. 'server' is a required property",
            )
        })?;
    let mut u = store::UserUpdate::default();
    for (k, v) in server {
        match k.as_str() {
            "name" => u.display_name = Some(check_name("name", v)?),
            "description" if mv >= 19 => {
                u.display_description = Some(match v {
                    Value::Null => None,
                    v => Some(str_field("description", v, 0, 255)?),
                })
            }
            "hostname" if mv >= 90 => {
                let h = str_field("hostname", v, 1, 255)?;
                if !valid_hostname(&h, mv >= 94) {
                    return Err(invalid("hostname", v, "is not a valid hostname"));
                }
                u.hostname = Some(h);
            }
            "accessIPv4" | "accessIPv6" => {
                let version = if k == "accessIPv4" { 4 } else { 6 };
                let s = v.as_str().unwrap_or_default();
                let val = if s.is_empty() {
                    None
                } else {
                    match crate::app::network::addr::parse_ip(s) {
                        Some((_, ver)) if ver == version => Some(s.to_owned()),
                        _ => return Err(invalid(k, v, &format!("'{s}' is not a 'ipv{version}'"))),
                    }
                };
                if version == 4 {
                    u.access_ip_v4 = Some(val);
                } else {
                    u.access_ip_v6 = Some(val);
                }
            }
            "OS-DCF:diskConfig" => {
                u.disk_config = Some(match v.as_str() {
                    Some(s @ ("AUTO" | "MANUAL")) => s.to_owned(),
                    _ => return Err(invalid(k, v, "is not one of ['AUTO', 'MANUAL']")),
                })
            }
            _ => return Err(unexpected("server", k)),
        }
    }
    if !store::update_user_fields(app.db.pool(), id, &u).await? {
        return Err(not_found(id));
    }
    show(app, ctx, id).await
}

/// Deletes a server: at once when it never reached a host, else through the
/// conductor (`task_state` deleting).
pub async fn delete(app: &App, ctx: &Context, request_id: &str, id: &str) -> Result<()> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:servers:delete",
        ctx,
        Target::project(&row.project_id),
    )?;
    if row.locked && !ctx.is_admin() {
        return Err(Error::conflict(format!("Instance {id} is locked")));
    }
    {
        let mut conn = app.db.pool().acquire().await?;
        store::start_action(
            &mut conn,
            id,
            request_id,
            "delete",
            &row.project_id,
            &ctx.user_id,
        )
        .await?;
    }
    if row.host.is_none() {
        // Never scheduled: nothing runs anywhere. A conductor that picks a
        // host meanwhile finds the instance gone and frees its claim.
        let expect = Expect {
            host: Some(None),
            ..Default::default()
        };
        if super::lifecycle::finish_delete(app, id, &expect).await? {
            let mut conn = app.db.pool().acquire().await?;
            store::finish_action(&mut *conn, id, request_id, false).await?;
            return Ok(());
        }
        if store::get_instance(app.db.pool(), id).await?.is_none() {
            return Ok(());
        }
    }
    // Any state, any task: deleting wins (Nova's delete).
    let changed = store::update_instance(
        app.db.pool(),
        id,
        &Expect::default(),
        &store::Change {
            task_state: Some(Some(task::DELETING.into())),
            ..Default::default()
        },
    )
    .await?;
    if changed.is_none() {
        return Ok(());
    }
    let rpc = app.rpc()?.with_request_id(request_id);
    rpc.cast_method::<mica_rpc::conductor::RunInstanceAction>(
        mica_rpc::Topic::conductor(),
        &mica_rpc::conductor::RunInstanceActionRequest {
            request_id: request_id.to_owned(),
            instance_uuid: id.to_owned(),
            action: mica_rpc::conductor::InstanceAction::Delete,
        },
    )
    .await
    .map_err(|e| {
        Error::new(
            Kind::ServiceUnavailable,
            "The conductor could not be reached; try again later.",
        )
        .with_source(e)
    })
}

// ---- metadata, tags, security groups, instance actions --------------------------------------

fn check_meta_write(app: &App, ctx: &Context, row: &InstanceRow) -> Result<()> {
    app.policy.enforce(
        "os_compute_api:server-metadata:update",
        ctx,
        Target::project(&row.project_id),
    )?;
    if row.locked && !ctx.is_admin() {
        return Err(Error::conflict(format!("Instance {} is locked", row.uuid)));
    }
    Ok(())
}

/// A server's metadata.
pub async fn metadata(app: &App, ctx: &Context, id: &str) -> Result<BTreeMap<String, String>> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:server-metadata:index",
        ctx,
        Target::project(&row.project_id),
    )?;
    Ok(store::metadata_of(app.db.pool(), &[row.uuid])
        .await?
        .into_values()
        .next()
        .unwrap_or_default())
}

/// Replaces (`replace`) or merges metadata; returns the whole of it.
pub async fn set_metadata(
    app: &App,
    ctx: &Context,
    id: &str,
    meta: BTreeMap<String, String>,
    replace: bool,
) -> Result<BTreeMap<String, String>> {
    let row = get_visible(app, ctx, id).await?;
    check_meta_write(app, ctx, &row)?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if !store::touch(&mut *tx, id).await? {
                return Err(not_found(id));
            }
            let mut all = if replace {
                BTreeMap::new()
            } else {
                store::metadata_of(&mut *tx, &[id.to_owned()])
                    .await?
                    .into_values()
                    .next()
                    .unwrap_or_default()
            };
            all.extend(meta.clone());
            quotas::check_metadata(&mut tx, app, &row.project_id, &ctx.user_id, all.len()).await?;
            store::replace_metadata(&mut tx, id, &all).await?;
            tx.commit().await?;
            Ok(all)
        })
        .await
}

/// Removes one metadata key.
pub async fn delete_metadata(app: &App, ctx: &Context, id: &str, key: &str) -> Result<()> {
    let row = get_visible(app, ctx, id).await?;
    check_meta_write(app, ctx, &row)?;
    if !store::delete_metadata_key(app.db.pool(), id, key).await? {
        return Err(Error::not_found("Metadata item was not found"));
    }
    store::touch(app.db.pool(), id).await?;
    Ok(())
}

/// A server's tags.
pub async fn tags(app: &App, ctx: &Context, id: &str) -> Result<Vec<String>> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-server-tags:index",
        ctx,
        Target::project(&row.project_id),
    )?;
    Ok(store::tags_of(app.db.pool(), &[row.uuid])
        .await?
        .into_values()
        .next()
        .unwrap_or_default())
}

/// Replaces (`Some(all)`), adds (`add`) or removes (`remove`) tags.
pub async fn change_tags(
    app: &App,
    ctx: &Context,
    id: &str,
    replace: Option<Vec<String>>,
    add: Option<&str>,
    remove: Option<&str>,
) -> Result<Vec<String>> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-server-tags:update",
        ctx,
        Target::project(&row.project_id),
    )?;
    if row.vm_state == vm::BUILDING {
        return Err(Error::conflict(format!(
            "Cannot 'update tags' instance {id} while it is in vm_state building"
        )));
    }
    if let Some(all) = &replace {
        check_tags(all)?;
    }
    if let Some(t) = add {
        check_tags(&[t.to_owned()])?;
    }
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if !store::touch(&mut *tx, id).await? {
                return Err(not_found(id));
            }
            if let Some(all) = &replace {
                let mut dedup: Vec<String> = Vec::new();
                for t in all {
                    if !dedup.contains(t) {
                        dedup.push(t.clone());
                    }
                }
                store::replace_tags(&mut tx, id, &dedup).await?;
            }
            if let Some(t) = add {
                let current = store::tags_of(&mut *tx, &[id.to_owned()])
                    .await?
                    .into_values()
                    .next()
                    .unwrap_or_default();
                if !current.iter().any(|c| c == t) && current.len() >= 50 {
                    return Err(Error::bad_request(
                        "The number of tags exceeded the per-server limit 50",
                    ));
                }
                store::add_tag(&mut *tx, id, t).await?;
            }
            if let Some(t) = remove
                && !store::remove_tag(&mut *tx, id, t).await?
            {
                return Err(Error::not_found(format!("Tag '{t}' could not be found.")));
            }
            let out = store::tags_of(&mut *tx, &[id.to_owned()])
                .await?
                .into_values()
                .next()
                .unwrap_or_default();
            tx.commit().await?;
            Ok(out)
        })
        .await
}

/// The security groups of a server (`GET /servers/{id}/os-security-groups`).
pub async fn security_groups(app: &App, ctx: &Context, id: &str) -> Result<Vec<net_store::Group>> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-security-groups:list",
        ctx,
        Target::project(&row.project_id),
    )?;
    let data = load(app, vec![row.clone()]).await?.remove(0);
    let mut conn = app.db.pool().acquire().await?;
    let all = net_store::list_groups(&mut conn, Some(&row.project_id), None, None).await?;
    Ok(all
        .into_iter()
        .filter(|g| data.security_groups.contains(&g.row.name))
        .collect())
}

/// Instance actions of a server (deleted ones too, from 2.21), newest
/// first, paged (2.58) by request id.
pub async fn actions(
    app: &App,
    ctx: &Context,
    mv: u32,
    id: &str,
    params: &[(String, String)],
) -> Result<Vec<store::Action>> {
    let row = if mv >= 21 {
        store::get_instance_any(app.db.pool(), id)
            .await?
            .filter(|i| can_see(ctx, i))
    } else {
        store::get_instance(app.db.pool(), id)
            .await?
            .filter(|i| can_see(ctx, i))
    }
    .ok_or_else(|| not_found(id))?;
    app.policy.enforce(
        "os_compute_api:os-instance-actions:list",
        ctx,
        Target::project(&row.project_id),
    )?;
    let mut since = None;
    let mut before = None;
    // Paged from 2.58 on, like every paged list: at most `max_limit`.
    let mut limit = (mv >= 58).then_some(app.config.compute.max_limit);
    let mut after = None;
    if mv >= 58 {
        for (k, v) in params {
            match k.as_str() {
                "changes-since" => since = Some(common::parse_time(k, v)?),
                "changes-before" if mv >= 66 => before = Some(common::parse_time(k, v)?),
                "limit" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| Error::bad_request("limit param must be an integer"))?;
                    if n < 0 {
                        return Err(Error::bad_request("limit param must be positive"));
                    }
                    limit = Some(n.min(app.config.compute.max_limit));
                }
                "marker" => {
                    let a = store::get_action(app.db.pool(), id, v)
                        .await?
                        .ok_or_else(|| {
                            Error::bad_request(format!("Marker {v} could not be found."))
                        })?;
                    after = Some(a.id);
                }
                _ => {}
            }
        }
    }
    store::list_actions(app.db.pool(), id, since, before, after, limit).await
}

/// One instance action with its events.
pub async fn action(
    app: &App,
    ctx: &Context,
    mv: u32,
    id: &str,
    request_id: &str,
) -> Result<(store::Action, Vec<store::Event>)> {
    let row = if mv >= 21 {
        store::get_instance_any(app.db.pool(), id)
            .await?
            .filter(|i| can_see(ctx, i))
    } else {
        store::get_instance(app.db.pool(), id)
            .await?
            .filter(|i| can_see(ctx, i))
    }
    .ok_or_else(|| not_found(id))?;
    app.policy.enforce(
        "os_compute_api:os-instance-actions:list",
        ctx,
        Target::project(&row.project_id),
    )?;
    let a = store::get_action(app.db.pool(), id, request_id)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "Action for request_id {request_id} on instance {id} not found"
            ))
        })?;
    let events = store::list_events(app.db.pool(), a.id).await?;
    Ok((a, events))
}

/// The end of a server's serial console log (`os-getConsoleOutput`): the
/// last `length` lines, all when `None`, read by the agent of its host.
pub async fn console_output(
    app: &App,
    ctx: &Context,
    id: &str,
    length: Option<u32>,
) -> Result<String> {
    use mica_rpc::Topic;
    use mica_rpc::compute::{ConsoleOutputRequest, GetConsoleOutput};
    let inst = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-console-output",
        ctx,
        Target::project(&inst.project_id),
    )?;
    let host = match inst.host.as_deref() {
        Some(h) if inst.vm_state != vm::BUILDING => h.to_owned(),
        _ => {
            return Err(Error::conflict(format!("Instance {id} is not ready.")));
        }
    };
    let req = ConsoleOutputRequest {
        instance_uuid: inst.uuid.clone(),
        length,
    };
    let timeout =
        std::time::Duration::from_secs(app.config.messaging.rpc_timeout_secs.clamp(1, 30));
    match app
        .rpc()?
        .call_method::<GetConsoleOutput>(Topic::compute(host.clone()), &req, timeout)
        .await
    {
        Ok(out) => Ok(out.output),
        Err(e) => {
            tracing::warn!(instance = %id, host = %host, error = %e, "console output");
            Err(Error::conflict(format!(
                "Unable to get the console output of instance {id}: its compute host {host} did not answer ({e})."
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_and_names() {
        assert_eq!(sanitize_hostname("My Server_1"), "my-server-1");
        assert_eq!(sanitize_hostname("--"), "server");
        assert!(valid_hostname("vm-1", false));
        assert!(!valid_hostname("vm.example.com", false));
        assert!(valid_hostname("vm.example.com", true));
        assert!(!valid_hostname("-vm", true));
        assert!(check_tags(&["a".into(), "b c".into()]).is_ok());
        assert!(check_tags(&["a/b".into()]).is_err());
        assert!(check_tags(&["".into()]).is_err());
        assert!(sql_like_literal("vm1").is_some());
        assert!(sql_like_literal("^vm").is_none());
        assert!(reservation_id().starts_with("r-"));
        assert_eq!(random_password().len(), 12);
    }
}
