//! The network API's app layer (a Neutron v2.0 subset): networks and
//! subnets here, ports in [`ports`], security groups in
//! [`security_groups`], addressing in [`addr`].
//!
//! Visibility: a project sees its own networks and shared ones; anything
//! else answers 404 as if it did not exist. Admins see everything.

pub mod addr;
pub mod ports;
pub mod quotas;
pub mod security_groups;

use std::collections::BTreeMap;

use super::App;
use crate::context::Context;
use crate::db::Timestamp;
use crate::db::network::{self as store, NetworkRow, NetworkUpdate, SubnetRow, SubnetUpdate};
use crate::error::{Error, Kind, Result};
use crate::policy::Target;
use addr::{Cidr, Pool};

/// The caller's project, or 403 for an unscoped token.
pub fn project_of(ctx: &Context) -> Result<&str> {
    ctx.project_id()
        .ok_or_else(|| Error::forbidden("This operation needs a project-scoped token."))
}

/// Whether `ctx` may see `n`.
pub fn can_see_network(ctx: &Context, n: &NetworkRow) -> bool {
    ctx.is_admin() || n.shared || ctx.project_id() == Some(n.project_id.as_str())
}

/// Neutron's 404 for a network.
pub fn network_not_found(id: &str) -> Error {
    Error::not_found(format!("Network {id} could not be found.")).with_code("NetworkNotFound")
}

fn subnet_not_found(id: &str) -> Error {
    Error::not_found(format!("Subnet {id} could not be found.")).with_code("SubnetNotFound")
}

fn check_name(what: &str, v: &str) -> Result<()> {
    if v.chars().count() > 255 {
        return Err(Error::bad_request(format!(
            "Invalid input for {what}. Reason: '{v}' exceeds maximum length of 255."
        )));
    }
    Ok(())
}

// ---- networks ---------------------------------------------------------------------------

/// A network to create.
#[derive(Debug, Clone, Default)]
pub struct NewNetwork {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Owner (admins may give another project).
    pub project_id: Option<String>,
    /// Shared.
    pub shared: bool,
    /// `router:external`.
    pub external: bool,
    /// Admin state.
    pub admin_state_up: bool,
    /// MTU (`None`: `[network] default_mtu`).
    pub mtu: Option<i64>,
    /// `provider:network_type`.
    pub network_type: Option<String>,
    /// `provider:physical_network`.
    pub physical_network: Option<String>,
    /// `provider:segmentation_id`.
    pub segmentation_id: Option<i64>,
    /// Port security default.
    pub port_security_enabled: bool,
}

/// Network types Mica knows.
pub const NETWORK_TYPES: [&str; 4] = ["flat", "vlan", "vxlan", "local"];

/// Creates a network. Sharing it, naming another owner or setting provider
/// attributes is for admins.
pub async fn create_network(app: &App, ctx: &Context, n: NewNetwork) -> Result<NetworkRow> {
    let own = project_of(ctx)?.to_owned();
    let project = n.project_id.clone().unwrap_or_else(|| own.clone());
    app.policy
        .enforce("network:create_network", ctx, Target::project(&own))?;
    if project != own && !ctx.is_admin() {
        return Err(Error::forbidden(
            "(rule:create_network and rule:create_network:tenant_id) is disallowed by policy",
        ));
    }
    if n.shared {
        app.policy
            .enforce("network:create_network:shared", ctx, Target::project(&own))?;
    }
    if n.external
        || n.network_type.is_some()
        || n.physical_network.is_some()
        || n.segmentation_id.is_some()
    {
        app.policy.enforce(
            "network:create_network:provider",
            ctx,
            Target::project(&own),
        )?;
    }
    check_name("name", &n.name)?;
    let network_type = n.network_type.clone().unwrap_or_else(|| "flat".into());
    if !NETWORK_TYPES.contains(&network_type.as_str()) {
        return Err(Error::bad_request(format!(
            "Invalid input for operation: network_type value '{network_type}' not supported."
        )));
    }
    if let Some(s) = n.segmentation_id {
        let ok = match network_type.as_str() {
            "vlan" => (1..=4094).contains(&s),
            "vxlan" => (1..=16_777_215).contains(&s),
            _ => false,
        };
        if !ok {
            return Err(Error::bad_request(format!(
                "Invalid input for operation: segmentation_id {s} is not valid for a {network_type} network."
            )));
        }
    }
    if network_type == "vlan" && n.physical_network.is_none() {
        return Err(Error::bad_request(
            "Invalid input for operation: physical_network required for VLAN provider network.",
        ));
    }
    let mtu = n.mtu.unwrap_or(app.config.network.default_mtu);
    if !(68..=9216).contains(&mtu) {
        return Err(Error::bad_request(format!(
            "Invalid input for mtu. Reason: '{mtu}' is not in range 68 through 9216."
        )));
    }
    let now = Timestamp::now();
    let row = NetworkRow {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project.clone(),
        name: n.name,
        description: n.description,
        shared: n.shared,
        external: n.external,
        admin_state_up: n.admin_state_up,
        status: "ACTIVE".into(),
        mtu,
        network_type,
        physical_network: n.physical_network,
        segmentation_id: n.segmentation_id,
        port_security_enabled: n.port_security_enabled,
        is_default: false,
        created_at: now,
        updated_at: now,
        revision_number: 1,
    };
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            crate::db::quotas::lock_project(&mut tx, &project).await?;
            quotas::check(&mut tx, app, &project, "network", 1).await?;
            store::insert_network(&mut *tx, &row).await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// A network the caller sees.
pub async fn get_network(app: &App, ctx: &Context, id: &str) -> Result<NetworkRow> {
    app.policy
        .enforce("network:get_network", ctx, Target::default())?;
    match store::get_network(app.db.pool(), id).await? {
        Some(n) if can_see_network(ctx, &n) => Ok(n),
        _ => Err(network_not_found(id)),
    }
}

/// Networks the caller sees, filtered by the query (`name`, `id`,
/// `shared`, `project_id`/`tenant_id`, `router:external`, `status`,
/// `admin_state_up`; repeated keys mean any of the values).
pub async fn list_networks(
    app: &App,
    ctx: &Context,
    params: &[(String, String)],
) -> Result<Vec<NetworkRow>> {
    app.policy
        .enforce("network:get_network", ctx, Target::default())?;
    let viewer = if ctx.is_admin() {
        None
    } else {
        Some(project_of(ctx)?)
    };
    let all = store::list_networks(app.db.pool(), viewer, None).await?;
    let f = Filters::new(params);
    Ok(all
        .into_iter()
        .filter(|n| {
            f.text("id", &n.id)
                && f.text("name", &n.name)
                && f.text("project_id", &n.project_id)
                && f.text("tenant_id", &n.project_id)
                && f.text("status", &n.status)
                && f.flag("shared", n.shared)
                && f.flag("router:external", n.external)
                && f.flag("admin_state_up", n.admin_state_up)
                && f.text("description", &n.description)
        })
        .collect())
}

/// Neutron-style list filters: `key=value`, repeated keys are alternatives.
pub struct Filters<'a> {
    by_key: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Filters<'a> {
    /// Collects the query's filters (`fields`, paging and sorting keys are not filters).
    pub fn new(params: &'a [(String, String)]) -> Filters<'a> {
        let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, v) in params {
            if matches!(
                k.as_str(),
                "fields" | "limit" | "marker" | "sort_key" | "sort_dir" | "page_reverse"
            ) {
                continue;
            }
            by_key.entry(k.as_str()).or_default().push(v.as_str());
        }
        Filters { by_key }
    }

    /// A filter's values, if given.
    pub fn get(&self, key: &str) -> Option<&Vec<&'a str>> {
        self.by_key.get(key)
    }

    /// True when `key` is not filtered or `value` is one of its values.
    pub fn text(&self, key: &str, value: &str) -> bool {
        self.by_key.get(key).is_none_or(|vs| vs.contains(&value))
    }

    /// As [`Filters::text`], for an optional value.
    pub fn opt(&self, key: &str, value: Option<&str>) -> bool {
        self.by_key
            .get(key)
            .is_none_or(|vs| vs.iter().any(|v| Some(*v) == value))
    }

    /// True when `key` is not filtered or one of its values means `value`.
    pub fn flag(&self, key: &str, value: bool) -> bool {
        self.by_key
            .get(key)
            .is_none_or(|vs| vs.iter().any(|v| parse_bool(v).is_some_and(|b| b == value)))
    }
}

/// Neutron's booleans in queries and bodies: true/false, 1/0, yes/no.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// Network changes.
pub async fn update_network(
    app: &App,
    ctx: &Context,
    id: &str,
    u: NetworkUpdate,
) -> Result<NetworkRow> {
    let n = get_network(app, ctx, id).await?;
    app.policy.enforce(
        "network:update_network",
        ctx,
        Target::project(&n.project_id),
    )?;
    if u.shared.is_some_and(|s| s != n.shared) {
        app.policy.enforce(
            "network:create_network:shared",
            ctx,
            Target::project(&n.project_id),
        )?;
    }
    if u.external.is_some_and(|s| s != n.external) {
        app.policy.enforce(
            "network:create_network:provider",
            ctx,
            Target::project(&n.project_id),
        )?;
    }
    if let Some(name) = &u.name {
        check_name("name", name)?;
    }
    if let Some(mtu) = u.mtu
        && !(68..=9216).contains(&mtu)
    {
        return Err(Error::bad_request(format!(
            "Invalid input for mtu. Reason: '{mtu}' is not in range 68 through 9216."
        )));
    }
    store::update_network(app.db.pool(), id, &u).await?;
    get_network(app, ctx, id).await
}

/// Deletes a network with its subnets; 409 while ports use it.
pub async fn delete_network(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let n = get_network(app, ctx, id).await?;
    app.policy.enforce(
        "network:delete_network",
        ctx,
        Target::project(&n.project_id),
    )?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if store::count_network_ports(&mut *tx, id).await? > 0 {
                return Err(Error::conflict(format!(
                    "Unable to complete operation on network {id}. There are one or more ports still in use on the network."
                ))
                .with_code("NetworkInUse"));
            }
            if !store::delete_network(&mut tx, id).await? {
                return Err(network_not_found(id));
            }
            tx.commit().await?;
            Ok(())
        })
        .await
}

// ---- subnets --------------------------------------------------------------------------

/// A subnet to create.
#[derive(Debug, Clone, Default)]
pub struct NewSubnet {
    /// Its network.
    pub network_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// 4 or 6.
    pub ip_version: i64,
    /// CIDR.
    pub cidr: String,
    /// Gateway: `None` the first host address, `Some(None)` no gateway.
    pub gateway_ip: Option<Option<String>>,
    /// DHCP.
    pub enable_dhcp: bool,
    /// Pools (`None`: the host range minus the gateway).
    pub allocation_pools: Option<Vec<Pool>>,
    /// DNS servers.
    pub dns_nameservers: Vec<String>,
    /// Host routes (`{"destination","nexthop"}`).
    pub host_routes: Vec<serde_json::Value>,
    /// Owner (admins may give another project).
    pub project_id: Option<String>,
}

fn check_dns(servers: &[String]) -> Result<()> {
    for d in servers {
        if addr::parse_ip(d).is_none() {
            return Err(Error::bad_request(format!(
                "Invalid input for dns_nameservers. Reason: '{d}' is not a valid nameserver."
            )));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in servers {
        if !seen.insert(d) {
            return Err(Error::bad_request(format!(
                "Invalid input for dns_nameservers. Reason: Duplicate nameserver '{d}'."
            )));
        }
    }
    Ok(())
}

/// Creates a subnet in a network the caller owns (admins: any); its CIDR
/// may not overlap the network's other subnets.
pub async fn create_subnet(app: &App, ctx: &Context, s: NewSubnet) -> Result<SubnetRow> {
    let n = get_network(app, ctx, &s.network_id).await?;
    app.policy
        .enforce("network:create_subnet", ctx, Target::project(&n.project_id))?;
    let project = s.project_id.clone().unwrap_or_else(|| n.project_id.clone());
    check_name("name", &s.name)?;
    let cidr = Cidr::parse(&s.cidr)?;
    if i64::from(cidr.version) != s.ip_version {
        return Err(Error::bad_request(format!(
            "Cidr {} does not match the ip_version {}.",
            s.cidr, s.ip_version
        )));
    }
    if cidr.version == 4 && cidr.len > 30 {
        return Err(Error::bad_request(format!(
            "Invalid input for cidr. Reason: '{}' is too small a subnet.",
            s.cidr
        )));
    }
    addr::check_tenant_cidr(&cidr)?;
    let gateway = match &s.gateway_ip {
        None => Some(cidr.host_range().0),
        Some(None) => None,
        Some(Some(g)) => {
            let (v, ver) = addr::parse_ip(g).ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid input for gateway_ip. Reason: '{g}' is not a valid IP address."
                ))
            })?;
            addr::check_tenant_gateway(v, ver)?;
            if ver != cidr.version || !cidr.contains(v) {
                return Err(Error::bad_request(format!(
                    "Gateway IP {g} is not in the subnet {}.",
                    cidr.to_text()
                )));
            }
            Some(v)
        }
    };
    let pools = match &s.allocation_pools {
        Some(p) if !p.is_empty() => {
            addr::check_pools(&cidr, p, gateway)?;
            p.clone()
        }
        _ => addr::default_pools(&cidr, gateway),
    };
    check_dns(&s.dns_nameservers)?;
    let now = Timestamp::now();
    let row = SubnetRow {
        id: uuid::Uuid::new_v4().to_string(),
        network_id: n.id.clone(),
        project_id: project,
        name: s.name,
        description: s.description,
        ip_version: s.ip_version,
        cidr: cidr.to_text(),
        gateway_ip: gateway.map(|g| addr::to_ip(g, cidr.version)),
        enable_dhcp: s.enable_dhcp,
        allocation_pools: serde_json::to_string(&pools).expect("pools serialize"),
        dns_nameservers: serde_json::to_string(&s.dns_nameservers).expect("strings serialize"),
        host_routes: serde_json::to_string(&s.host_routes).expect("routes serialize"),
        created_at: now,
        updated_at: now,
        revision_number: 1,
    };
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            crate::db::quotas::lock_project(&mut tx, &row.project_id).await?;
            quotas::check(&mut tx, app, &row.project_id, "subnet", 1).await?;
            // Serialize subnet creation on the network (overlap check).
            store::update_network(&mut *tx, &n.id, &NetworkUpdate::default()).await?;
            for other in store::list_subnets(&mut *tx, None, Some(&n.id)).await? {
                if let Ok(o) = Cidr::parse(&other.cidr)
                    && o.overlaps(&cidr)
                {
                    return Err(Error::bad_request(format!(
                        "Invalid input for operation: Requested subnet with cidr: {} for network: {} overlaps with another subnet.",
                        row.cidr, n.id
                    )));
                }
            }
            store::insert_subnet(&mut *tx, &row).await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// Whether `ctx` sees subnet `s` (through its network).
async fn visible_subnet(app: &App, ctx: &Context, id: &str) -> Result<(SubnetRow, NetworkRow)> {
    app.policy
        .enforce("network:get_subnet", ctx, Target::default())?;
    let s = store::get_subnet(app.db.pool(), id)
        .await?
        .ok_or_else(|| subnet_not_found(id))?;
    let n = store::get_network(app.db.pool(), &s.network_id)
        .await?
        .ok_or_else(|| subnet_not_found(id))?;
    if !(can_see_network(ctx, &n) || ctx.project_id() == Some(s.project_id.as_str())) {
        return Err(subnet_not_found(id));
    }
    Ok((s, n))
}

/// A subnet the caller sees.
pub async fn get_subnet(app: &App, ctx: &Context, id: &str) -> Result<SubnetRow> {
    Ok(visible_subnet(app, ctx, id).await?.0)
}

/// Subnets the caller sees, filtered (`network_id`, `name`, `id`, `cidr`,
/// `ip_version`, `project_id`/`tenant_id`, `gateway_ip`, `enable_dhcp`).
pub async fn list_subnets(
    app: &App,
    ctx: &Context,
    params: &[(String, String)],
) -> Result<Vec<SubnetRow>> {
    app.policy
        .enforce("network:get_subnet", ctx, Target::default())?;
    let viewer = if ctx.is_admin() {
        None
    } else {
        Some(project_of(ctx)?)
    };
    let all = store::list_subnets(app.db.pool(), viewer, None).await?;
    let f = Filters::new(params);
    Ok(all
        .into_iter()
        .filter(|s| {
            f.text("id", &s.id)
                && f.text("name", &s.name)
                && f.text("network_id", &s.network_id)
                && f.text("cidr", &s.cidr)
                && f.text("ip_version", &s.ip_version.to_string())
                && f.text("project_id", &s.project_id)
                && f.text("tenant_id", &s.project_id)
                && f.opt("gateway_ip", s.gateway_ip.as_deref())
                && f.flag("enable_dhcp", s.enable_dhcp)
        })
        .collect())
}

/// Subnets of a network, for views (every one, visibility decided by the network).
pub async fn subnets_of_networks(app: &App) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in store::list_subnets(app.db.pool(), None, None).await? {
        out.entry(s.network_id).or_default().push(s.id);
    }
    Ok(out)
}

/// Subnet changes (`allocation_pools`, `dns_nameservers`, `gateway_ip`
/// validated as at creation).
pub async fn update_subnet(
    app: &App,
    ctx: &Context,
    id: &str,
    mut u: SubnetUpdate,
    pools: Option<Vec<Pool>>,
    dns: Option<Vec<String>>,
) -> Result<SubnetRow> {
    let (s, _) = visible_subnet(app, ctx, id).await?;
    app.policy
        .enforce("network:update_subnet", ctx, Target::project(&s.project_id))?;
    let cidr = Cidr::parse(&s.cidr)?;
    let gateway = match &u.gateway_ip {
        Some(Some(g)) => {
            let (v, ver) = addr::parse_ip(g).ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid input for gateway_ip. Reason: '{g}' is not a valid IP address."
                ))
            })?;
            addr::check_tenant_gateway(v, ver)?;
            if ver != cidr.version || !cidr.contains(v) {
                return Err(Error::bad_request(format!(
                    "Gateway IP {g} is not in the subnet {}.",
                    cidr.to_text()
                )));
            }
            Some(v)
        }
        Some(None) => None,
        None => s
            .gateway_ip
            .as_deref()
            .and_then(addr::parse_ip)
            .map(|x| x.0),
    };
    let current: Vec<Pool> = serde_json::from_str(&s.allocation_pools).unwrap_or_default();
    let pools = pools.unwrap_or(current);
    addr::check_pools(&cidr, &pools, gateway)?;
    u.allocation_pools = Some(serde_json::to_string(&pools).expect("pools serialize"));
    if let Some(d) = dns {
        check_dns(&d)?;
        u.dns_nameservers = Some(serde_json::to_string(&d).expect("strings serialize"));
    }
    if let Some(n) = &u.name {
        check_name("name", n)?;
    }
    store::update_subnet(app.db.pool(), id, &u).await?;
    get_subnet(app, ctx, id).await
}

/// Deletes a subnet; 409 while a port has an address in it.
pub async fn delete_subnet(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let (s, _) = visible_subnet(app, ctx, id).await?;
    app.policy
        .enforce("network:delete_subnet", ctx, Target::project(&s.project_id))?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            store::lock_subnet(&mut tx, id).await?;
            if store::count_subnet_ips(&mut *tx, id).await? > 0 {
                return Err(Error::new(
                    Kind::Conflict,
                    format!(
                        "Unable to complete operation on subnet {id}: One or more ports have an IP allocation from this subnet."
                    ),
                )
                .with_code("SubnetInUse"));
            }
            if !store::delete_subnet(&mut *tx, id).await? {
                return Err(subnet_not_found(id));
            }
            tx.commit().await?;
            Ok(())
        })
        .await
}

// ---- bootstrap -------------------------------------------------------------------------

/// Creates the cloud's default shared network (`[network]
/// default_network_name`, with one subnet `default_subnet_cidr`) owned by
/// `project_id`, unless one exists. Idempotent. Returns its id.
pub async fn bootstrap_default_network(app: &App, project_id: &str) -> Result<Option<String>> {
    let cfg = &app.config.network;
    if cfg.default_network_name.is_empty() {
        return Ok(None);
    }
    if let Some(n) = store::default_network(app.db.pool()).await? {
        return Ok(Some(n.id));
    }
    let cidr = Cidr::parse(&cfg.default_subnet_cidr)?;
    check_dns(&cfg.default_dns_nameservers)?;
    let gateway = cidr.host_range().0;
    let now = Timestamp::now();
    let net = NetworkRow {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project_id.to_owned(),
        name: cfg.default_network_name.clone(),
        description: "The default network, shared by every project.".into(),
        shared: true,
        external: false,
        admin_state_up: true,
        status: "ACTIVE".into(),
        mtu: cfg.default_mtu,
        network_type: "flat".into(),
        physical_network: Some("default".into()),
        segmentation_id: None,
        port_security_enabled: true,
        is_default: true,
        created_at: now,
        updated_at: now,
        revision_number: 1,
    };
    let subnet = SubnetRow {
        id: uuid::Uuid::new_v4().to_string(),
        network_id: net.id.clone(),
        project_id: project_id.to_owned(),
        name: format!("{}-subnet", cfg.default_network_name),
        description: String::new(),
        ip_version: i64::from(cidr.version),
        cidr: cidr.to_text(),
        gateway_ip: Some(addr::to_ip(gateway, cidr.version)),
        enable_dhcp: true,
        allocation_pools: serde_json::to_string(&addr::default_pools(&cidr, Some(gateway)))
            .expect("pools serialize"),
        dns_nameservers: serde_json::to_string(&cfg.default_dns_nameservers)
            .expect("strings serialize"),
        host_routes: "[]".into(),
        created_at: now,
        updated_at: now,
        revision_number: 1,
    };
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if let Some(n) = store::default_network(&mut *tx).await? {
                return Ok(Some(n.id));
            }
            store::insert_network(&mut *tx, &net).await?;
            store::insert_subnet(&mut *tx, &subnet).await?;
            tx.commit().await?;
            Ok(Some(net.id.clone()))
        })
        .await
}
