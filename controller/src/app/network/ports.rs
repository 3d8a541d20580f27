//! Ports: MAC and fixed IP allocation and the network API's port
//! operations. What a compute host needs to plug an instance's ports is
//! built by the conductor (`conductor::spec`).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::AnyConnection;

use super::addr::{self, Cidr, Pool};
use super::{Filters, can_see_network, network_not_found, project_of, security_groups};
use crate::app::App;
use crate::context::Context;
use crate::db::Timestamp;
use crate::db::network::{
    self as store, NetworkRow, Port, PortIp, PortQuery, PortRow, PortUpdate, SubnetRow,
};
use crate::error::{Error, Result};
use crate::policy::Target;

/// One requested fixed IP: a subnet, an address, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixedIpRequest {
    /// The subnet.
    pub subnet_id: Option<String>,
    /// The address.
    pub ip_address: Option<String>,
}

/// A port to allocate (the caller checked policy and visibility).
#[derive(Debug, Clone, Default)]
pub struct PortRequest {
    /// Its network.
    pub network: Option<NetworkRow>,
    /// Owner.
    pub project_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Requested fixed IPs (empty: one per IP version from the network).
    pub fixed_ips: Vec<FixedIpRequest>,
    /// Whether `fixed_ips` was given at all (`[]` means no address).
    pub fixed_ips_given: bool,
    /// MAC (`None`: generated).
    pub mac_address: Option<String>,
    /// Device id.
    pub device_id: String,
    /// Device owner.
    pub device_owner: String,
    /// Host binding.
    pub binding_host_id: String,
    /// Security group ids.
    pub security_groups: Vec<String>,
    /// Port security (`None`: the network's default).
    pub port_security_enabled: Option<bool>,
    /// Admin state.
    pub admin_state_up: bool,
    /// Deleted with its device.
    pub delete_with_device: bool,
    /// The instance the compute API binds it to (`''`: none).
    pub bound_instance: String,
}

fn random_mac(base: &str) -> String {
    let mut b = [0u8; 3];
    getrandom::fill(&mut b).expect("the OS random source works");
    let prefix = if base.split(':').count() == 3 {
        base.to_ascii_lowercase()
    } else {
        "fa:16:3e".into()
    };
    format!("{prefix}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// Whether `mac` is a unicast MAC in `aa:bb:cc:dd:ee:ff` form.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
        && mac != "00:00:00:00:00:00"
}

fn pools_of(s: &SubnetRow) -> Vec<Pool> {
    serde_json::from_str(&s.allocation_pools).unwrap_or_default()
}

/// Allocates a port's MAC and fixed IPs and inserts it, inside the caller's
/// transaction. Each subnet it takes an address from is locked first (in id
/// order), so concurrent allocations never hand out one address twice.
pub async fn allocate_port(
    conn: &mut AnyConnection,
    base_mac: &str,
    req: &PortRequest,
) -> Result<Port> {
    let network = req
        .network
        .as_ref()
        .ok_or_else(|| Error::bad_request("A port needs a network."))?;
    let subnets = store::list_subnets(&mut *conn, None, Some(&network.id)).await?;
    let by_id: BTreeMap<&str, &SubnetRow> = subnets.iter().map(|s| (s.id.as_str(), s)).collect();
    // Which subnet each request draws from.
    let mut wanted: Vec<(&SubnetRow, Option<u128>)> = Vec::new();
    if req.fixed_ips_given {
        for f in &req.fixed_ips {
            let ip = match &f.ip_address {
                Some(a) => Some(addr::parse_ip(a).ok_or_else(|| {
                    Error::bad_request(format!(
                        "Invalid input for fixed_ips. Reason: '{a}' is not a valid IP address."
                    ))
                })?),
                None => None,
            };
            let subnet = match (&f.subnet_id, ip) {
                (Some(id), _) => *by_id.get(id.as_str()).ok_or_else(|| {
                    Error::bad_request(format!(
                        "Invalid input for operation: Failed to create port on network {}, because fixed_ips included invalid subnet {id}.",
                        network.id
                    ))
                })?,
                (None, Some((v, ver))) => *subnets
                    .iter()
                    .find(|s| {
                        Cidr::parse(&s.cidr).is_ok_and(|c| c.version == ver && c.contains(v))
                    })
                    .as_ref()
                    .ok_or_else(|| {
                        Error::bad_request(format!(
                            "IP address {} is not a valid IP for any of the subnets on the specified network.",
                            f.ip_address.as_deref().unwrap_or_default()
                        ))
                    })?,
                (None, None) => {
                    return Err(Error::bad_request(
                        "Invalid input for fixed_ips: each entry needs a subnet_id or an ip_address.",
                    ));
                }
            };
            if let Some((v, ver)) = ip {
                let c = Cidr::parse(&subnet.cidr)?;
                if c.version != ver || !c.contains(v) {
                    return Err(Error::bad_request(format!(
                        "IP address {} is not a valid IP for the specified subnet.",
                        f.ip_address.as_deref().unwrap_or_default()
                    )));
                }
            }
            wanted.push((subnet, ip.map(|x| x.0)));
        }
    } else {
        // One address per IP version: the first subnet of that version
        // with room (checked below, after the lock).
        for version in [4, 6] {
            if let Some(s) = subnets.iter().find(|s| s.ip_version == version) {
                wanted.push((s, None));
            }
        }
    }
    let mut locked: BTreeSet<&str> = wanted.iter().map(|(s, _)| s.id.as_str()).collect();
    if !req.fixed_ips_given {
        // Auto allocation may move on to the other subnets of a version.
        locked.extend(subnets.iter().map(|s| s.id.as_str()));
    }
    for id in &locked {
        store::lock_subnet(&mut *conn, id).await?;
    }
    let port_id = uuid::Uuid::new_v4().to_string();
    let mut fixed: Vec<PortIp> = Vec::new();
    let mut taken: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (subnet, ip) in &wanted {
        let (subnet_id, address) = match ip {
            Some(v) => {
                let cidr = Cidr::parse(&subnet.cidr)?;
                let text = addr::to_ip(*v, cidr.version);
                if !taken.contains_key(&subnet.id) {
                    let u = store::used_ips(&mut *conn, &subnet.id).await?;
                    taken.insert(subnet.id.clone(), u);
                }
                let in_use = taken[&subnet.id]
                    .iter()
                    .any(|u| addr::parse_ip(u).is_some_and(|(x, _)| x == *v));
                if in_use || subnet.gateway_ip.as_deref() == Some(text.as_str()) {
                    return Err(Error::conflict(format!(
                        "IP address {text} already allocated in subnet {}",
                        subnet.id
                    ))
                    .with_code("IpAddressAlreadyAllocated"));
                }
                (subnet.id.clone(), text)
            }
            None => {
                // A named subnet, or (automatic) any subnet of that version.
                let candidates: Vec<&SubnetRow> = if req.fixed_ips_given {
                    vec![*subnet]
                } else {
                    subnets
                        .iter()
                        .filter(|o| o.ip_version == subnet.ip_version)
                        .collect()
                };
                let mut chosen = None;
                for c in candidates {
                    if !taken.contains_key(&c.id) {
                        let u = store::used_ips(&mut *conn, &c.id).await?;
                        taken.insert(c.id.clone(), u);
                    }
                    let cidr = Cidr::parse(&c.cidr)?;
                    if let Some(a) = addr::first_free(&cidr, &pools_of(c), &taken[&c.id]) {
                        chosen = Some((c.id.clone(), a));
                        break;
                    }
                }
                chosen.ok_or_else(|| {
                    Error::conflict(format!(
                        "No more IP addresses available on network {}.",
                        network.id
                    ))
                    .with_code("IpAddressGenerationFailure")
                })?
            }
        };
        taken
            .entry(subnet_id.clone())
            .or_default()
            .push(address.clone());
        fixed.push(PortIp {
            port_id: port_id.clone(),
            subnet_id,
            ip_address: address,
        });
    }
    let mac = match &req.mac_address {
        Some(m) => {
            let m = m.to_ascii_lowercase();
            if !valid_mac(&m) {
                return Err(Error::bad_request(format!(
                    "Invalid input for mac_address. Reason: '{m}' is not a valid MAC address."
                )));
            }
            if store::mac_in_use(&mut *conn, &network.id, &m).await? {
                return Err(Error::conflict(format!(
                    "Unable to complete operation for network {}. The mac address {m} is in use.",
                    network.id
                ))
                .with_code("MacAddressInUse"));
            }
            m
        }
        None => {
            let mut m = random_mac(base_mac);
            let mut tries = 0;
            while store::mac_in_use(&mut *conn, &network.id, &m).await? {
                tries += 1;
                if tries > 16 {
                    return Err(Error::conflict("Unable to generate a unique mac address.")
                        .with_code("MacAddressGenerationFailure"));
                }
                m = random_mac(base_mac);
            }
            m
        }
    };
    let now = Timestamp::now();
    let port = Port {
        row: PortRow {
            id: port_id,
            network_id: network.id.clone(),
            project_id: req.project_id.clone(),
            name: req.name.clone(),
            description: req.description.clone(),
            mac_address: mac,
            admin_state_up: req.admin_state_up,
            status: if req.binding_host_id.is_empty() {
                "DOWN".into()
            } else {
                "ACTIVE".into()
            },
            device_id: req.device_id.clone(),
            device_owner: req.device_owner.clone(),
            binding_host_id: req.binding_host_id.clone(),
            port_security_enabled: req
                .port_security_enabled
                .unwrap_or(network.port_security_enabled),
            delete_with_device: req.delete_with_device,
            bound_instance: req.bound_instance.clone(),
            created_at: now,
            updated_at: now,
            revision_number: 1,
        },
        fixed_ips: fixed,
        security_groups: if req
            .port_security_enabled
            .unwrap_or(network.port_security_enabled)
        {
            req.security_groups.clone()
        } else {
            vec![]
        },
    };
    store::insert_port(&mut *conn, &port).await?;
    Ok(port)
}

// ---- the port API ------------------------------------------------------------------

fn port_not_found(id: &str) -> Error {
    Error::not_found(format!("Port {id} could not be found.")).with_code("PortNotFound")
}

/// A port to create through the network API.
#[derive(Debug, Clone, Default)]
pub struct NewPort {
    /// Its network.
    pub network_id: String,
    /// Owner (admins may give another project).
    pub project_id: Option<String>,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Fixed IPs (`None`: automatic).
    pub fixed_ips: Option<Vec<FixedIpRequest>>,
    /// MAC.
    pub mac_address: Option<String>,
    /// Device id.
    pub device_id: String,
    /// Device owner.
    pub device_owner: String,
    /// Host binding.
    pub binding_host_id: Option<String>,
    /// Security group ids (`None`: the project's `default`).
    pub security_groups: Option<Vec<String>>,
    /// Port security.
    pub port_security_enabled: Option<bool>,
    /// Admin state.
    pub admin_state_up: bool,
}

/// Neutron's rule for `device_id`: a non-admin may point a port only at a
/// device of the port's own project. A server of another project, or for a
/// `compute:` owner anything but a live server of the port's project, is
/// refused (403). Even then it is only a label: the compute API binds ports
/// into servers itself (`bound_instance`), never by `device_id`.
async fn check_device(
    app: &App,
    ctx: &Context,
    project: &str,
    device_id: &str,
    device_owner: &str,
    rule: &str,
) -> Result<()> {
    if device_id.is_empty() || ctx.is_admin() {
        return Ok(());
    }
    let inst = crate::db::instances::get_instance(app.db.pool(), device_id).await?;
    let own = inst.as_ref().is_some_and(|i| i.project_id == project);
    let other = inst.as_ref().is_some_and(|i| i.project_id != project);
    if other || (device_owner.starts_with("compute:") && !own) {
        return Err(Error::forbidden(format!(
            "(rule:{rule} and rule:{rule}:device_id) is disallowed by policy: device {device_id} is not a server of project {project}."
        ))
        .with_code("PolicyNotAuthorized"));
    }
    Ok(())
}

/// Creates a port on a network the caller sees.
pub async fn create_port(app: &App, ctx: &Context, p: NewPort) -> Result<Port> {
    let own = project_of(ctx)?.to_owned();
    app.policy
        .enforce("network:create_port", ctx, Target::project(&own))?;
    let network = store::get_network(app.db.pool(), &p.network_id)
        .await?
        .filter(|n| can_see_network(ctx, n))
        .ok_or_else(|| network_not_found(&p.network_id))?;
    let project = p.project_id.clone().unwrap_or_else(|| own.clone());
    if project != own && !ctx.is_admin() {
        return Err(Error::forbidden(
            "(rule:create_port and rule:create_port:tenant_id) is disallowed by policy",
        ));
    }
    if p.mac_address.is_some() {
        app.policy.enforce(
            "network:create_port:mac_address",
            ctx,
            Target::project(&network.project_id),
        )?;
    }
    if p.fixed_ips
        .as_ref()
        .is_some_and(|f| f.iter().any(|i| i.ip_address.is_some()))
    {
        app.policy.enforce(
            "network:create_port:fixed_ips:ip_address",
            ctx,
            Target::project(&network.project_id),
        )?;
    }
    if p.binding_host_id.as_ref().is_some_and(|h| !h.is_empty()) {
        app.policy.enforce(
            "network:create_port:binding:host_id",
            ctx,
            Target::project(&own),
        )?;
    }
    check_device(
        app,
        ctx,
        &project,
        &p.device_id,
        &p.device_owner,
        "create_port",
    )
    .await?;
    let security_groups = match &p.security_groups {
        Some(ids) => security_groups::resolve_ids(app, ctx, &project, ids).await?,
        None => vec![security_groups::ensure_default(app, &project).await?.row.id],
    };
    let req = PortRequest {
        network: Some(network),
        project_id: project,
        name: p.name,
        description: p.description,
        fixed_ips_given: p.fixed_ips.is_some(),
        fixed_ips: p.fixed_ips.unwrap_or_default(),
        mac_address: p.mac_address,
        device_id: p.device_id,
        device_owner: p.device_owner,
        binding_host_id: p.binding_host_id.unwrap_or_default(),
        security_groups,
        port_security_enabled: p.port_security_enabled,
        admin_state_up: p.admin_state_up,
        delete_with_device: false,
        bound_instance: String::new(),
    };
    let base = app.config.network.base_mac.clone();
    let port = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            crate::db::quotas::lock_project(&mut tx, &req.project_id).await?;
            super::quotas::check(&mut tx, app, &req.project_id, "port", 1).await?;
            let port = allocate_port(&mut tx, &base, &req).await?;
            tx.commit().await?;
            Ok(port)
        })
        .await?;
    security_groups::push_for_groups(app, &port.security_groups, &[]).await;
    Ok(port)
}

/// A port the caller sees (its own, or any for admins).
pub async fn get_port(app: &App, ctx: &Context, id: &str) -> Result<Port> {
    let mut conn = app.db.pool().acquire().await?;
    let p = store::get_port(&mut conn, id)
        .await?
        .ok_or_else(|| port_not_found(id))?;
    if !app
        .policy
        .check("network:get_port", ctx, Target::project(&p.row.project_id))
    {
        return Err(port_not_found(id));
    }
    Ok(p)
}

/// Ports the caller sees, filtered (`network_id`, `device_id`,
/// `device_owner`, `mac_address`, `name`, `id`, `project_id`/`tenant_id`,
/// `binding:host_id`, `status`, `fixed_ips=subnet_id=…`/`ip_address=…`).
pub async fn list_ports(
    app: &App,
    ctx: &Context,
    params: &[(String, String)],
) -> Result<Vec<Port>> {
    let f = Filters::new(params);
    let mut q = PortQuery::default();
    if !ctx.is_admin() {
        q.project_id = Some(project_of(ctx)?.to_owned());
    }
    if let Some(d) = f.get("device_id") {
        q.device_ids = Some(d.iter().map(|s| s.to_string()).collect());
    }
    for fi in f.get("fixed_ips").cloned().unwrap_or_default() {
        if let Some(s) = fi.strip_prefix("subnet_id=") {
            q.subnet_id = Some(s.to_owned());
        } else if let Some(a) = fi.strip_prefix("ip_address=") {
            q.ip_address = Some(a.to_owned());
        }
    }
    let mut conn = app.db.pool().acquire().await?;
    let ports = store::list_ports(&mut conn, &q).await?;
    Ok(ports
        .into_iter()
        .filter(|p| {
            let r = &p.row;
            f.text("id", &r.id)
                && f.text("name", &r.name)
                && f.text("network_id", &r.network_id)
                && f.text("device_owner", &r.device_owner)
                && f.text("mac_address", &r.mac_address)
                && f.text("project_id", &r.project_id)
                && f.text("tenant_id", &r.project_id)
                && f.text("binding:host_id", &r.binding_host_id)
                && f.text("status", &r.status)
                && f.flag("admin_state_up", r.admin_state_up)
        })
        .collect())
}

/// Port changes from the network API.
#[derive(Debug, Clone, Default)]
pub struct PortChanges {
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Admin state.
    pub admin_state_up: Option<bool>,
    /// Security group ids.
    pub security_groups: Option<Vec<String>>,
    /// Port security.
    pub port_security_enabled: Option<bool>,
    /// Device id.
    pub device_id: Option<String>,
    /// Device owner.
    pub device_owner: Option<String>,
    /// Host binding.
    pub binding_host_id: Option<String>,
}

/// Updates a port; security group changes are pushed to its host.
pub async fn update_port(app: &App, ctx: &Context, id: &str, c: PortChanges) -> Result<Port> {
    let p = get_port(app, ctx, id).await?;
    app.policy.enforce(
        "network:update_port",
        ctx,
        Target::project(&p.row.project_id),
    )?;
    if c.binding_host_id.is_some() {
        app.policy.enforce(
            "network:create_port:binding:host_id",
            ctx,
            Target::project(&p.row.project_id),
        )?;
    }
    if c.device_id.is_some() || c.device_owner.is_some() {
        check_device(
            app,
            ctx,
            &p.row.project_id,
            c.device_id.as_deref().unwrap_or(&p.row.device_id),
            c.device_owner.as_deref().unwrap_or(&p.row.device_owner),
            "update_port",
        )
        .await?;
    }
    // A client moving a bound port's `device_id` elsewhere unbinds it from
    // its server (the compute API never follows `device_id`).
    let unbind = c
        .device_id
        .as_ref()
        .is_some_and(|d| !p.row.bound_instance.is_empty() && *d != p.row.bound_instance);
    let groups = match &c.security_groups {
        Some(ids) => Some(security_groups::resolve_ids(app, ctx, &p.row.project_id, ids).await?),
        None => None,
    };
    let security_off = c.port_security_enabled == Some(false)
        || (c.port_security_enabled.is_none() && !p.row.port_security_enabled);
    if security_off && groups.as_ref().is_some_and(|g| !g.is_empty()) {
        return Err(Error::conflict(format!(
            "Port {id} does not have port security enabled: it cannot have security groups."
        ))
        .with_code("PortSecurityAndIPRequiredForSecurityGroups"));
    }
    let u = PortUpdate {
        name: c.name,
        description: c.description,
        admin_state_up: c.admin_state_up,
        device_id: c.device_id,
        device_owner: c.device_owner,
        binding_host_id: c.binding_host_id,
        port_security_enabled: c.port_security_enabled,
        bound_instance: unbind.then(String::new),
        ..Default::default()
    };
    let old_groups = p.security_groups.clone();
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            store::update_port(&mut *tx, id, &u).await?;
            if let Some(g) = &groups {
                store::set_port_security_groups(&mut tx, id, g).await?;
            } else if security_off && c.port_security_enabled == Some(false) {
                store::set_port_security_groups(&mut tx, id, &[]).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await?;
    let mut touched: BTreeSet<String> = old_groups.into_iter().collect();
    touched.extend(groups.unwrap_or_default());
    security_groups::push_for_groups(
        app,
        &touched.into_iter().collect::<Vec<_>>(),
        &[id.to_owned()],
    )
    .await;
    get_port(app, ctx, id).await
}

/// Deletes a port; 409 while a live server uses it.
pub async fn delete_port(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let p = get_port(app, ctx, id).await?;
    app.policy.enforce(
        "network:delete_port",
        ctx,
        Target::project(&p.row.project_id),
    )?;
    if !p.row.bound_instance.is_empty() {
        let live = crate::db::instances::get_instance(app.db.pool(), &p.row.bound_instance)
            .await?
            .is_some();
        if live {
            return Err(Error::conflict(format!(
                "Port {id} is in use by server {}; delete the server first.",
                p.row.bound_instance
            ))
            .with_code("PortInUse"));
        }
    }
    if !store::delete_port(app.db.pool(), id).await? {
        return Err(port_not_found(id));
    }
    security_groups::push_for_groups(app, &p.security_groups, &[]).await;
    Ok(())
}
