//! Network tables: networks, subnets, ports with their fixed IPs and
//! security groups, security groups and their rules.
//!
//! # Address allocation
//!
//! A port's MAC is unique in its network and each fixed IP unique in its
//! subnet (constraints). Allocation takes the subnet's lock first
//! ([`lock_subnet`], a revision bump) so that concurrent allocators in one
//! subnet read the used addresses one after another and never pick the same
//! one; the constraint is only the last line of defence.

use std::collections::BTreeMap;

use sqlx::{Any, AnyConnection, Executor};

use super::{Sql, Timestamp};
use crate::error::Result;

/// A network row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct NetworkRow {
    /// UUID.
    pub id: String,
    /// Owning project.
    pub project_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Usable by every project.
    #[sqlx(try_from = "super::Flag")]
    pub shared: bool,
    /// `router:external`.
    #[sqlx(try_from = "super::Flag")]
    pub external: bool,
    /// Administrative state.
    #[sqlx(try_from = "super::Flag")]
    pub admin_state_up: bool,
    /// `ACTIVE`.
    pub status: String,
    /// MTU.
    pub mtu: i64,
    /// `provider:network_type` (`flat`, `vlan`, `vxlan`, `local`).
    pub network_type: String,
    /// `provider:physical_network`.
    pub physical_network: Option<String>,
    /// `provider:segmentation_id`.
    pub segmentation_id: Option<i64>,
    /// Default for new ports.
    #[sqlx(try_from = "super::Flag")]
    pub port_security_enabled: bool,
    /// The cloud's default network (bootstrap's).
    #[sqlx(try_from = "super::Flag")]
    pub is_default: bool,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Bumped by every change.
    pub revision_number: i64,
}

/// Inserts a network.
pub async fn insert_network<'e>(
    ex: impl Executor<'e, Database = Any>,
    n: &NetworkRow,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO networks (id, project_id, name, description, shared, external, admin_state_up, \
         status, mtu, network_type, physical_network, segmentation_id, port_security_enabled, \
         is_default, created_at, updated_at, revision_number) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&n.id)
    .bind(&n.project_id)
    .bind(&n.name)
    .bind(&n.description)
    .bind(n.shared)
    .bind(n.external)
    .bind(n.admin_state_up)
    .bind(&n.status)
    .bind(n.mtu)
    .bind(&n.network_type)
    .bind(&n.physical_network)
    .bind(n.segmentation_id)
    .bind(n.port_security_enabled)
    .bind(n.is_default)
    .bind(n.created_at)
    .bind(n.updated_at)
    .bind(n.revision_number)
    .execute(ex)
    .await?;
    Ok(())
}

/// A network by id.
pub async fn get_network<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<NetworkRow>> {
    Ok(sqlx::query_as("SELECT * FROM networks WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// The default network, if bootstrap made one.
pub async fn default_network<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<Option<NetworkRow>> {
    Ok(
        sqlx::query_as(
            "SELECT * FROM networks WHERE is_default = TRUE ORDER BY created_at LIMIT 1",
        )
        .fetch_optional(ex)
        .await?,
    )
}

/// Networks a project sees (its own and shared ones; `None`: all), by
/// creation, optionally by exact name.
pub async fn list_networks<'e>(
    ex: impl Executor<'e, Database = Any>,
    viewer: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<NetworkRow>> {
    let mut q = Sql::new("SELECT * FROM networks WHERE 1 = 1");
    if let Some(p) = viewer {
        q.push(" AND (shared = TRUE OR project_id = ")
            .bind(p.to_owned())
            .push(")");
    }
    if let Some(n) = name {
        q.push(" AND name = ").bind(n.to_owned());
    }
    q.push(" ORDER BY created_at, id");
    q.fetch_all(ex).await
}

/// Changeable network fields (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkUpdate {
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Shared.
    pub shared: Option<bool>,
    /// Admin state.
    pub admin_state_up: Option<bool>,
    /// MTU.
    pub mtu: Option<i64>,
    /// Port security default.
    pub port_security_enabled: Option<bool>,
    /// External.
    pub external: Option<bool>,
}

/// Updates a network; false when it is gone.
pub async fn update_network<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    u: &NetworkUpdate,
) -> Result<bool> {
    let mut q =
        Sql::new("UPDATE networks SET revision_number = revision_number + 1, updated_at = ");
    q.bind(Timestamp::now());
    if let Some(v) = &u.name {
        q.push(", name = ").bind(v.clone());
    }
    if let Some(v) = &u.description {
        q.push(", description = ").bind(v.clone());
    }
    if let Some(v) = u.shared {
        q.push(", shared = ").bind(v);
    }
    if let Some(v) = u.admin_state_up {
        q.push(", admin_state_up = ").bind(v);
    }
    if let Some(v) = u.mtu {
        q.push(", mtu = ").bind(v);
    }
    if let Some(v) = u.port_security_enabled {
        q.push(", port_security_enabled = ").bind(v);
    }
    if let Some(v) = u.external {
        q.push(", external = ").bind(v);
    }
    q.push(" WHERE id = ").bind(id.to_owned());
    Ok(q.execute(ex).await? == 1)
}

/// Deletes a network and its subnets (the caller checked it has no ports);
/// false when it is gone.
pub async fn delete_network(conn: &mut AnyConnection, id: &str) -> Result<bool> {
    sqlx::query("DELETE FROM subnets WHERE network_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query("DELETE FROM networks WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1)
}

// ---- subnets ----------------------------------------------------------------------

/// A subnet row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SubnetRow {
    /// UUID.
    pub id: String,
    /// Its network.
    pub network_id: String,
    /// Owning project.
    pub project_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// 4 or 6.
    pub ip_version: i64,
    /// `10.0.0.0/24`.
    pub cidr: String,
    /// Gateway.
    pub gateway_ip: Option<String>,
    /// DHCP on.
    #[sqlx(try_from = "super::Flag")]
    pub enable_dhcp: bool,
    /// JSON `[{"start","end"}]`.
    pub allocation_pools: String,
    /// JSON array of addresses.
    pub dns_nameservers: String,
    /// JSON array of `{"destination","nexthop"}`.
    pub host_routes: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Bumped by every change (and by every allocation, as its lock).
    pub revision_number: i64,
}

/// Inserts a subnet.
pub async fn insert_subnet<'e>(ex: impl Executor<'e, Database = Any>, s: &SubnetRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO subnets (id, network_id, project_id, name, description, ip_version, cidr, \
         gateway_ip, enable_dhcp, allocation_pools, dns_nameservers, host_routes, created_at, \
         updated_at, revision_number) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&s.id)
    .bind(&s.network_id)
    .bind(&s.project_id)
    .bind(&s.name)
    .bind(&s.description)
    .bind(s.ip_version)
    .bind(&s.cidr)
    .bind(&s.gateway_ip)
    .bind(s.enable_dhcp)
    .bind(&s.allocation_pools)
    .bind(&s.dns_nameservers)
    .bind(&s.host_routes)
    .bind(s.created_at)
    .bind(s.updated_at)
    .bind(s.revision_number)
    .execute(ex)
    .await?;
    Ok(())
}

/// A subnet by id.
pub async fn get_subnet<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<SubnetRow>> {
    Ok(sqlx::query_as("SELECT * FROM subnets WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// Subnets of the networks a project sees (`None`: all), optionally of one
/// network, by creation.
pub async fn list_subnets<'e>(
    ex: impl Executor<'e, Database = Any>,
    viewer: Option<&str>,
    network_id: Option<&str>,
) -> Result<Vec<SubnetRow>> {
    let mut q =
        Sql::new("SELECT s.* FROM subnets s JOIN networks n ON n.id = s.network_id WHERE 1 = 1");
    if let Some(p) = viewer {
        q.push(" AND (n.shared = TRUE OR n.project_id = ")
            .bind(p.to_owned())
            .push(" OR s.project_id = ")
            .bind(p.to_owned())
            .push(")");
    }
    if let Some(n) = network_id {
        q.push(" AND s.network_id = ").bind(n.to_owned());
    }
    q.push(" ORDER BY s.created_at, s.id");
    q.fetch_all(ex).await
}

/// Changeable subnet fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubnetUpdate {
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Gateway (`Some(None)` removes it).
    pub gateway_ip: Option<Option<String>>,
    /// DHCP.
    pub enable_dhcp: Option<bool>,
    /// DNS servers (JSON).
    pub dns_nameservers: Option<String>,
    /// Allocation pools (JSON).
    pub allocation_pools: Option<String>,
    /// Host routes (JSON).
    pub host_routes: Option<String>,
}

/// Updates a subnet; false when it is gone.
pub async fn update_subnet<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    u: &SubnetUpdate,
) -> Result<bool> {
    let mut q = Sql::new("UPDATE subnets SET revision_number = revision_number + 1, updated_at = ");
    q.bind(Timestamp::now());
    if let Some(v) = &u.name {
        q.push(", name = ").bind(v.clone());
    }
    if let Some(v) = &u.description {
        q.push(", description = ").bind(v.clone());
    }
    if let Some(v) = &u.gateway_ip {
        q.push(", gateway_ip = ").bind(v.clone());
    }
    if let Some(v) = u.enable_dhcp {
        q.push(", enable_dhcp = ").bind(v);
    }
    if let Some(v) = &u.dns_nameservers {
        q.push(", dns_nameservers = ").bind(v.clone());
    }
    if let Some(v) = &u.allocation_pools {
        q.push(", allocation_pools = ").bind(v.clone());
    }
    if let Some(v) = &u.host_routes {
        q.push(", host_routes = ").bind(v.clone());
    }
    q.push(" WHERE id = ").bind(id.to_owned());
    Ok(q.execute(ex).await? == 1)
}

/// Deletes a subnet (the caller checked no port uses it); false when gone.
pub async fn delete_subnet<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM subnets WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// Takes a subnet's allocation lock until the transaction ends; false when
/// the subnet is gone.
pub async fn lock_subnet(conn: &mut AnyConnection, id: &str) -> Result<bool> {
    Ok(
        sqlx::query("UPDATE subnets SET revision_number = revision_number + 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected()
            == 1,
    )
}

/// The addresses in use in a subnet.
pub async fn used_ips<'e>(
    ex: impl Executor<'e, Database = Any>,
    subnet_id: &str,
) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT ip_address FROM port_ips WHERE subnet_id = $1")
            .bind(subnet_id)
            .fetch_all(ex)
            .await?,
    )
}

/// How many fixed IPs use a subnet.
pub async fn count_subnet_ips<'e>(
    ex: impl Executor<'e, Database = Any>,
    subnet_id: &str,
) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM port_ips WHERE subnet_id = $1")
            .bind(subnet_id)
            .fetch_one(ex)
            .await?,
    )
}

// ---- ports ---------------------------------------------------------------------------

/// A port row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PortRow {
    /// UUID.
    pub id: String,
    /// Its network.
    pub network_id: String,
    /// Owning project.
    pub project_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// MAC address.
    pub mac_address: String,
    /// Administrative state.
    #[sqlx(try_from = "super::Flag")]
    pub admin_state_up: bool,
    /// `DOWN`, `ACTIVE`, `BUILD`.
    pub status: String,
    /// The server (or other device) using it.
    pub device_id: String,
    /// `compute:<zone>`, `network:dhcp`, …
    pub device_owner: String,
    /// `binding:host_id`.
    pub binding_host_id: String,
    /// Anti-spoofing and security groups.
    #[sqlx(try_from = "super::Flag")]
    pub port_security_enabled: bool,
    /// Made by the compute API for a server: deleted with it.
    #[sqlx(try_from = "super::Flag")]
    pub delete_with_device: bool,
    /// The instance the compute API bound it to (`''`: none). Only the
    /// compute API's own flow writes it; `device_id` alone, which any
    /// client may set, never puts a port into a server.
    pub bound_instance: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Bumped by every change.
    pub revision_number: i64,
}

/// A fixed IP of a port.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PortIp {
    /// The port.
    pub port_id: String,
    /// The subnet.
    pub subnet_id: String,
    /// The address.
    pub ip_address: String,
}

/// A port with its fixed IPs and security group ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    /// The row.
    pub row: PortRow,
    /// Fixed IPs.
    pub fixed_ips: Vec<PortIp>,
    /// Security group ids.
    pub security_groups: Vec<String>,
}

/// Inserts a port with its fixed IPs and security groups.
pub async fn insert_port(conn: &mut AnyConnection, p: &Port) -> Result<()> {
    let r = &p.row;
    sqlx::query(
        "INSERT INTO ports (id, network_id, project_id, name, description, mac_address, \
         admin_state_up, status, device_id, device_owner, binding_host_id, port_security_enabled, \
         delete_with_device, bound_instance, created_at, updated_at, revision_number) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&r.id)
    .bind(&r.network_id)
    .bind(&r.project_id)
    .bind(&r.name)
    .bind(&r.description)
    .bind(&r.mac_address)
    .bind(r.admin_state_up)
    .bind(&r.status)
    .bind(&r.device_id)
    .bind(&r.device_owner)
    .bind(&r.binding_host_id)
    .bind(r.port_security_enabled)
    .bind(r.delete_with_device)
    .bind(&r.bound_instance)
    .bind(r.created_at)
    .bind(r.updated_at)
    .bind(r.revision_number)
    .execute(&mut *conn)
    .await?;
    for ip in &p.fixed_ips {
        sqlx::query("INSERT INTO port_ips (port_id, subnet_id, ip_address) VALUES ($1, $2, $3)")
            .bind(&r.id)
            .bind(&ip.subnet_id)
            .bind(&ip.ip_address)
            .execute(&mut *conn)
            .await?;
    }
    set_port_security_groups(conn, &r.id, &p.security_groups).await
}

/// Replaces a port's security groups.
pub async fn set_port_security_groups(
    conn: &mut AnyConnection,
    port_id: &str,
    groups: &[String],
) -> Result<()> {
    sqlx::query("DELETE FROM port_security_groups WHERE port_id = $1")
        .bind(port_id)
        .execute(&mut *conn)
        .await?;
    for g in groups {
        sqlx::query(
            "INSERT INTO port_security_groups (port_id, security_group_id) VALUES ($1, $2) \
             ON CONFLICT (port_id, security_group_id) DO NOTHING",
        )
        .bind(port_id)
        .bind(g)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Whether a MAC is taken in a network.
pub async fn mac_in_use<'e>(
    ex: impl Executor<'e, Database = Any>,
    network_id: &str,
    mac: &str,
) -> Result<bool> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ports WHERE network_id = $1 AND mac_address = $2")
            .bind(network_id)
            .bind(mac)
            .fetch_one(ex)
            .await?;
    Ok(n > 0)
}

async fn attach_ports(conn: &mut AnyConnection, rows: Vec<PortRow>) -> Result<Vec<Port>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut q = Sql::new("SELECT * FROM port_ips WHERE port_id IN (");
    q.bind_list(ids.clone())
        .push(") ORDER BY subnet_id, ip_address");
    let ips: Vec<PortIp> = q.fetch_all(&mut *conn).await?;
    let mut q =
        Sql::new("SELECT port_id, security_group_id FROM port_security_groups WHERE port_id IN (");
    q.bind_list(ids).push(") ORDER BY security_group_id");
    let sgs: Vec<(String, String)> = q.fetch_all(&mut *conn).await?;
    let mut by_port: BTreeMap<String, (Vec<PortIp>, Vec<String>)> = BTreeMap::new();
    for ip in ips {
        by_port.entry(ip.port_id.clone()).or_default().0.push(ip);
    }
    for (p, g) in sgs {
        by_port.entry(p).or_default().1.push(g);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let (fixed_ips, security_groups) = by_port.remove(&row.id).unwrap_or_default();
            Port {
                row,
                fixed_ips,
                security_groups,
            }
        })
        .collect())
}

/// A port by id.
pub async fn get_port(conn: &mut AnyConnection, id: &str) -> Result<Option<Port>> {
    let rows: Vec<PortRow> = sqlx::query_as("SELECT * FROM ports WHERE id = $1")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(attach_ports(conn, rows).await?.into_iter().next())
}

/// A port listing.
#[derive(Debug, Clone, Default)]
pub struct PortQuery {
    /// Only this project's ports (`None`: all).
    pub project_id: Option<String>,
    /// Ports of this network.
    pub network_id: Option<String>,
    /// Ports whose `device_id` is one of these (a client-set field).
    pub device_ids: Option<Vec<String>>,
    /// Ports the compute API bound to one of these instances, in the
    /// instance's own project.
    pub bound_to: Option<Vec<String>>,
    /// Ports with this owner.
    pub device_owner: Option<String>,
    /// Bound to this host.
    pub host: Option<String>,
    /// With this MAC.
    pub mac_address: Option<String>,
    /// With this name.
    pub name: Option<String>,
    /// With a fixed IP in this subnet.
    pub subnet_id: Option<String>,
    /// With this fixed IP.
    pub ip_address: Option<String>,
}

/// Ports matching `q`, by creation.
pub async fn list_ports(conn: &mut AnyConnection, f: &PortQuery) -> Result<Vec<Port>> {
    let mut q = Sql::new("SELECT * FROM ports p WHERE 1 = 1");
    let eq = |q: &mut Sql, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            q.push(" AND ").push(col).push(" = ").bind(v.clone());
        }
    };
    eq(&mut q, "p.project_id", &f.project_id);
    eq(&mut q, "p.network_id", &f.network_id);
    eq(&mut q, "p.device_owner", &f.device_owner);
    eq(&mut q, "p.binding_host_id", &f.host);
    eq(&mut q, "p.mac_address", &f.mac_address);
    eq(&mut q, "p.name", &f.name);
    if let Some(d) = &f.device_ids {
        q.push(" AND p.device_id IN (")
            .bind_list(d.clone())
            .push(")");
    }
    if let Some(d) = &f.bound_to {
        q.push(" AND p.device_id = p.bound_instance AND p.bound_instance IN (")
            .bind_list(d.clone())
            .push(
                ") AND EXISTS (SELECT 1 FROM instances i \
                 WHERE i.uuid = p.bound_instance AND i.project_id = p.project_id)",
            );
    }
    if f.subnet_id.is_some() || f.ip_address.is_some() {
        q.push(" AND EXISTS (SELECT 1 FROM port_ips i WHERE i.port_id = p.id");
        if let Some(s) = &f.subnet_id {
            q.push(" AND i.subnet_id = ").bind(s.clone());
        }
        if let Some(a) = &f.ip_address {
            q.push(" AND i.ip_address = ").bind(a.clone());
        }
        q.push(")");
    }
    q.push(" ORDER BY p.created_at, p.id");
    let rows: Vec<PortRow> = q.fetch_all(&mut *conn).await?;
    attach_ports(conn, rows).await
}

/// The ports of an instance, by creation: those the compute API bound to
/// it (a port whose `device_id` a client pointed at it is not one).
pub async fn ports_of_instance(conn: &mut AnyConnection, uuid: &str) -> Result<Vec<Port>> {
    list_ports(
        conn,
        &PortQuery {
            bound_to: Some(vec![uuid.to_owned()]),
            ..Default::default()
        },
    )
    .await
}

/// Changeable port fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortUpdate {
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Admin state.
    pub admin_state_up: Option<bool>,
    /// Device id.
    pub device_id: Option<String>,
    /// Device owner.
    pub device_owner: Option<String>,
    /// `binding:host_id`.
    pub binding_host_id: Option<String>,
    /// Status.
    pub status: Option<String>,
    /// Port security.
    pub port_security_enabled: Option<bool>,
    /// Deleted with its device.
    pub delete_with_device: Option<bool>,
    /// The instance the compute API bound it to (`''`: none).
    pub bound_instance: Option<String>,
}

/// Updates a port; false when it is gone.
pub async fn update_port<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    u: &PortUpdate,
) -> Result<bool> {
    let mut q = Sql::new("UPDATE ports SET revision_number = revision_number + 1, updated_at = ");
    q.bind(Timestamp::now());
    let text = |q: &mut Sql, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            q.push(", ").push(col).push(" = ").bind(v.clone());
        }
    };
    text(&mut q, "name", &u.name);
    text(&mut q, "description", &u.description);
    text(&mut q, "device_id", &u.device_id);
    text(&mut q, "device_owner", &u.device_owner);
    text(&mut q, "binding_host_id", &u.binding_host_id);
    text(&mut q, "status", &u.status);
    text(&mut q, "bound_instance", &u.bound_instance);
    if let Some(v) = u.admin_state_up {
        q.push(", admin_state_up = ").bind(v);
    }
    if let Some(v) = u.port_security_enabled {
        q.push(", port_security_enabled = ").bind(v);
    }
    if let Some(v) = u.delete_with_device {
        q.push(", delete_with_device = ").bind(v);
    }
    q.push(" WHERE id = ").bind(id.to_owned());
    Ok(q.execute(ex).await? == 1)
}

/// Claims a free port of `project_id` for an instance (the compute API,
/// for a server create's `networks: [{"port": …}]`): false when the port is
/// gone, in use, or another project's.
pub async fn claim_port<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    project_id: &str,
    instance_uuid: &str,
    device_owner: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE ports SET device_id = $1, device_owner = $2, bound_instance = $1, \
         revision_number = revision_number + 1, updated_at = $3 \
         WHERE id = $4 AND project_id = $5 AND device_id = '' AND bound_instance = ''",
    )
    .bind(instance_uuid)
    .bind(device_owner)
    .bind(Timestamp::now())
    .bind(id)
    .bind(project_id)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Binds every port bound to an instance to a host (the conductor, once
/// scheduled; `''` unbinds). Returns how many ports.
pub async fn bind_device_ports<'e>(
    ex: impl Executor<'e, Database = Any>,
    device_id: &str,
    host: &str,
    status: &str,
) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE ports SET binding_host_id = $1, status = $2, revision_number = revision_number + 1, \
         updated_at = $3 WHERE bound_instance = $4 AND device_id = $4",
    )
    .bind(host)
    .bind(status)
    .bind(Timestamp::now())
    .bind(device_id)
    .execute(ex)
    .await?
    .rows_affected())
}

/// Deletes a port (its IPs and group links go with it); false when gone.
pub async fn delete_port<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM ports WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// Releases the ports bound to an instance: those made for it are
/// deleted, the others unbound. Returns the ids of the deleted ports.
pub async fn release_device_ports(
    conn: &mut AnyConnection,
    device_id: &str,
) -> Result<Vec<String>> {
    let deleted: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM ports WHERE bound_instance = $1 AND delete_with_device = TRUE",
    )
    .bind(device_id)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM ports WHERE bound_instance = $1 AND delete_with_device = TRUE")
        .bind(device_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE ports SET device_id = '', device_owner = '', binding_host_id = '', status = 'DOWN', \
         bound_instance = '', revision_number = revision_number + 1, updated_at = $1 \
         WHERE bound_instance = $2",
    )
    .bind(Timestamp::now())
    .bind(device_id)
    .execute(&mut *conn)
    .await?;
    Ok(deleted)
}

/// How many ports use a network.
pub async fn count_network_ports<'e>(
    ex: impl Executor<'e, Database = Any>,
    network_id: &str,
) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM ports WHERE network_id = $1")
            .bind(network_id)
            .fetch_one(ex)
            .await?,
    )
}

// ---- security groups -----------------------------------------------------------------

/// A security group row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct GroupRow {
    /// UUID.
    pub id: String,
    /// Owning project.
    pub project_id: String,
    /// Name (`default` is unique per project).
    pub name: String,
    /// Description.
    pub description: String,
    /// Stateful.
    #[sqlx(try_from = "super::Flag")]
    pub stateful: bool,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Bumped by every change (rules included).
    pub revision_number: i64,
}

/// A security group rule row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RuleRow {
    /// UUID.
    pub id: String,
    /// Its group.
    pub security_group_id: String,
    /// Owning project.
    pub project_id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// `tcp`, `udp`, `icmp`, a number, or none for any.
    pub protocol: Option<String>,
    /// First port (or ICMP type).
    pub port_range_min: Option<i64>,
    /// Last port (or ICMP code).
    pub port_range_max: Option<i64>,
    /// Remote CIDR.
    pub remote_ip_prefix: Option<String>,
    /// Remote group.
    pub remote_group_id: Option<String>,
    /// Description.
    pub description: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Revision.
    pub revision_number: i64,
}

/// A group with its rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The row.
    pub row: GroupRow,
    /// Rules, by creation.
    pub rules: Vec<RuleRow>,
}

/// Inserts a group (a second `default` of a project is a 409 from the
/// unique index).
pub async fn insert_group<'e>(ex: impl Executor<'e, Database = Any>, g: &GroupRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO security_groups (id, project_id, name, description, stateful, created_at, \
         updated_at, revision_number) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&g.id)
    .bind(&g.project_id)
    .bind(&g.name)
    .bind(&g.description)
    .bind(g.stateful)
    .bind(g.created_at)
    .bind(g.updated_at)
    .bind(g.revision_number)
    .execute(ex)
    .await?;
    Ok(())
}

/// Inserts a rule.
pub async fn insert_rule<'e>(ex: impl Executor<'e, Database = Any>, r: &RuleRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO security_group_rules (id, security_group_id, project_id, direction, ethertype, \
         protocol, port_range_min, port_range_max, remote_ip_prefix, remote_group_id, description, \
         created_at, updated_at, revision_number) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&r.id)
    .bind(&r.security_group_id)
    .bind(&r.project_id)
    .bind(&r.direction)
    .bind(&r.ethertype)
    .bind(&r.protocol)
    .bind(r.port_range_min)
    .bind(r.port_range_max)
    .bind(&r.remote_ip_prefix)
    .bind(&r.remote_group_id)
    .bind(&r.description)
    .bind(r.created_at)
    .bind(r.updated_at)
    .bind(r.revision_number)
    .execute(ex)
    .await?;
    Ok(())
}

async fn attach_groups(conn: &mut AnyConnection, rows: Vec<GroupRow>) -> Result<Vec<Group>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut q = Sql::new("SELECT * FROM security_group_rules WHERE security_group_id IN (");
    q.bind_list(ids).push(") ORDER BY created_at, id");
    let rules: Vec<RuleRow> = q.fetch_all(&mut *conn).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let rules = rules
                .iter()
                .filter(|r| r.security_group_id == row.id)
                .cloned()
                .collect();
            Group { row, rules }
        })
        .collect())
}

/// A group by id, with rules.
pub async fn get_group(conn: &mut AnyConnection, id: &str) -> Result<Option<Group>> {
    let rows: Vec<GroupRow> = sqlx::query_as("SELECT * FROM security_groups WHERE id = $1")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(attach_groups(conn, rows).await?.into_iter().next())
}

/// Groups with rules, of one project (`None`: all), optionally by exact
/// name, or only these ids, by creation.
pub async fn list_groups(
    conn: &mut AnyConnection,
    project_id: Option<&str>,
    name: Option<&str>,
    ids: Option<&[String]>,
) -> Result<Vec<Group>> {
    let mut q = Sql::new("SELECT * FROM security_groups WHERE 1 = 1");
    if let Some(p) = project_id {
        q.push(" AND project_id = ").bind(p.to_owned());
    }
    if let Some(n) = name {
        q.push(" AND name = ").bind(n.to_owned());
    }
    if let Some(ids) = ids {
        q.push(" AND id IN (").bind_list(ids.to_vec()).push(")");
    }
    q.push(" ORDER BY created_at, id");
    let rows: Vec<GroupRow> = q.fetch_all(&mut *conn).await?;
    attach_groups(conn, rows).await
}

/// A project's group by exact name (the oldest when several share it).
pub async fn find_group<'e>(
    ex: impl Executor<'e, Database = Any>,
    project_id: &str,
    name: &str,
) -> Result<Vec<GroupRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM security_groups WHERE project_id = $1 AND name = $2 ORDER BY created_at, id",
    )
    .bind(project_id)
    .bind(name)
    .fetch_all(ex)
    .await?)
}

/// Renames or re-describes a group; false when gone.
pub async fn update_group<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    name: Option<&str>,
    description: Option<&str>,
) -> Result<bool> {
    let mut q =
        Sql::new("UPDATE security_groups SET revision_number = revision_number + 1, updated_at = ");
    q.bind(Timestamp::now());
    if let Some(n) = name {
        q.push(", name = ").bind(n.to_owned());
    }
    if let Some(d) = description {
        q.push(", description = ").bind(d.to_owned());
    }
    q.push(" WHERE id = ").bind(id.to_owned());
    Ok(q.execute(ex).await? == 1)
}

/// Bumps a group's revision (its rules changed); false when gone.
pub async fn touch_group<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE security_groups SET revision_number = revision_number + 1, updated_at = $1 WHERE id = $2",
    )
    .bind(Timestamp::now())
    .bind(id)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Whether a port or an instance uses a group.
pub async fn group_in_use<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM port_security_groups WHERE security_group_id = $1) + \
         (SELECT COUNT(*) FROM instance_security_groups s JOIN instances i ON i.uuid = s.instance_uuid \
          AND i.deleted = FALSE WHERE s.security_group_id = $1)",
    )
    .bind(id)
    .fetch_one(ex)
    .await?;
    Ok(n > 0)
}

/// Deletes a group and its rules; false when gone.
pub async fn delete_group<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM security_groups WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// A rule by id.
pub async fn get_rule<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<RuleRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM security_group_rules WHERE id = $1")
            .bind(id)
            .fetch_optional(ex)
            .await?,
    )
}

/// Rules, of one project (`None`: all), optionally of one group.
pub async fn list_rules<'e>(
    ex: impl Executor<'e, Database = Any>,
    project_id: Option<&str>,
    group_id: Option<&str>,
) -> Result<Vec<RuleRow>> {
    let mut q = Sql::new("SELECT * FROM security_group_rules WHERE 1 = 1");
    if let Some(p) = project_id {
        q.push(" AND project_id = ").bind(p.to_owned());
    }
    if let Some(g) = group_id {
        q.push(" AND security_group_id = ").bind(g.to_owned());
    }
    q.push(" ORDER BY created_at, id");
    q.fetch_all(ex).await
}

/// Deletes a rule; false when gone.
pub async fn delete_rule<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM security_group_rules WHERE id = $1")
            .bind(id)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Fixed IPs of every port in a group (for rules whose remote is the group).
pub async fn member_ips<'e>(
    ex: impl Executor<'e, Database = Any>,
    group_id: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT i.ip_address FROM port_ips i JOIN port_security_groups g \
         ON g.port_id = i.port_id WHERE g.security_group_id = $1 ORDER BY i.ip_address",
    )
    .bind(group_id)
    .fetch_all(ex)
    .await?)
}

/// Bound ports (id, device id, host) whose security depends on any of
/// `group_ids`: members of the groups, and members of groups with a rule
/// whose remote is one of them. These are the ports to push again when the
/// groups change.
pub async fn ports_affected_by<'e>(
    ex: impl Executor<'e, Database = Any>,
    group_ids: &[String],
) -> Result<Vec<(String, String, String)>> {
    let mut q = Sql::new(
        "SELECT DISTINCT p.id, p.device_id, p.binding_host_id FROM ports p \
         JOIN port_security_groups g ON g.port_id = p.id \
         WHERE p.binding_host_id <> '' AND (g.security_group_id IN (",
    );
    q.bind_list(group_ids.to_vec())
        .push(") OR g.security_group_id IN (SELECT r.security_group_id FROM security_group_rules r WHERE r.remote_group_id IN (")
        .bind_list(group_ids.to_vec())
        .push("))) ORDER BY p.id");
    q.fetch_all(ex).await
}

/// How many of each network resource a project has: (networks, subnets,
/// ports, security groups, security group rules).
pub async fn count_of_project<'e>(
    ex: impl Executor<'e, Database = Any>,
    project_id: &str,
) -> Result<(i64, i64, i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM networks WHERE project_id = $1), \
         (SELECT COUNT(*) FROM subnets WHERE project_id = $1), \
         (SELECT COUNT(*) FROM ports WHERE project_id = $1), \
         (SELECT COUNT(*) FROM security_groups WHERE project_id = $1), \
         (SELECT COUNT(*) FROM security_group_rules WHERE project_id = $1)",
    )
    .bind(project_id)
    .fetch_one(ex)
    .await?)
}
