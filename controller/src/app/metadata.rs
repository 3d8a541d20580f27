//! What an instance reads from the metadata service, Nova-compatible: the
//! OpenStack tree (`/openstack/<version>/meta_data.json`, `user_data`,
//! `network_data.json`, `vendor_data*.json`, `password`) and the EC2 tree
//! (`/<version>/meta-data/…`, `/<version>/user-data`).
//!
//! The HTTP side (`api::metadata`) checks the proxy's signature and walks
//! paths; this module loads one instance's view ([`load`]) and renders its
//! documents. Which fields exist at which OpenStack version follows Nova's
//! metadata versions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::App;
use super::network::addr::{Cidr, to_ip};
use crate::db::{instances, network as net_store, passwords};
use crate::error::{Error, Result};

/// The OpenStack metadata versions served (Folsom … Rocky), oldest first.
pub const OPENSTACK_VERSIONS: [&str; 8] = [
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
];

/// The EC2 metadata versions served, oldest first.
pub const EC2_VERSIONS: [&str; 9] = [
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
];

const GRIZZLY: &str = "2013-04-04";
const HAVANA: &str = "2013-10-17";
const LIBERTY: &str = "2015-10-15";
const NEWTON_ONE: &str = "2016-06-30";
const NEWTON_TWO: &str = "2016-10-06";

/// An OpenStack version as served: a dated one, or `latest` (the newest).
pub fn openstack_version(v: &str) -> Option<&'static str> {
    if v == "latest" {
        return OPENSTACK_VERSIONS.last().copied();
    }
    OPENSTACK_VERSIONS.iter().copied().find(|x| *x == v)
}

/// Whether an EC2 version (or `latest`) is served.
pub fn ec2_version(v: &str) -> bool {
    v == "latest" || EC2_VERSIONS.contains(&v)
}

/// One fixed address of a port, with its subnet.
#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    pub ip: String,
    pub ip_version: u8,
    /// The subnet's netmask (`255.255.255.0`).
    pub netmask: String,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    /// `(destination network, its netmask, next hop)`.
    pub host_routes: Vec<(String, String, String)>,
    pub dhcp: bool,
}

/// A port of the instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub id: String,
    pub mac: String,
    pub network_id: String,
    pub mtu: u32,
    pub addresses: Vec<Address>,
}

/// Everything the metadata service tells one instance.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub uuid: String,
    pub name: String,
    pub hostname: String,
    pub project_id: String,
    pub launch_index: i64,
    pub availability_zone: String,
    pub reservation_id: String,
    pub image_ref: String,
    pub flavor_name: String,
    pub ephemeral: bool,
    pub swap: bool,
    pub root_device_name: String,
    /// `(name, public key)`.
    pub key: Option<(String, String)>,
    /// Decoded user data.
    pub user_data: Option<Vec<u8>>,
    pub meta: BTreeMap<String, String>,
    pub security_groups: Vec<String>,
    pub ports: Vec<Port>,
}

/// The live instance `uuid` of project `project_id` as its guest sees it;
/// `None` when there is no such instance in that project.
pub async fn load(app: &App, uuid: &str, project_id: &str) -> Result<Option<InstanceView>> {
    let mut conn = app.db.pool().acquire().await?;
    let Some(row) = instances::get_instance(&mut *conn, uuid).await? else {
        return Ok(None);
    };
    if row.project_id != project_id {
        return Ok(None);
    }
    let ids = vec![row.uuid.clone()];
    let meta = instances::metadata_of(&mut *conn, &ids)
        .await?
        .remove(&row.uuid)
        .unwrap_or_default();
    let group_ids = instances::security_groups_of(&mut *conn, &ids)
        .await?
        .remove(&row.uuid)
        .unwrap_or_default();
    let groups = net_store::list_groups(&mut conn, Some(&row.project_id), None, None).await?;
    let security_groups = group_ids
        .iter()
        .map(|g| {
            groups
                .iter()
                .find(|x| x.row.id == *g || x.row.name == *g)
                .map_or_else(|| g.clone(), |x| x.row.name.clone())
        })
        .collect();
    let mut ports = Vec::new();
    for p in net_store::ports_of_instance(&mut conn, &row.uuid).await? {
        let Some(net) = net_store::get_network(&mut *conn, &p.row.network_id).await? else {
            continue;
        };
        let subnets = net_store::list_subnets(&mut *conn, None, Some(&net.id)).await?;
        let addresses = p
            .fixed_ips
            .iter()
            .filter_map(|ip| {
                let s = subnets.iter().find(|s| s.id == ip.subnet_id)?;
                let cidr = Cidr::parse(&s.cidr).ok()?;
                Some(Address {
                    ip: ip.ip_address.clone(),
                    ip_version: cidr.version,
                    netmask: cidr.netmask(),
                    gateway: s.gateway_ip.clone(),
                    dns: serde_json::from_str(&s.dns_nameservers).unwrap_or_default(),
                    host_routes: serde_json::from_str::<Vec<Value>>(&s.host_routes)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|r| {
                            let dest = Cidr::parse(r["destination"].as_str()?).ok()?;
                            Some((
                                to_ip(dest.base, dest.version),
                                dest.netmask(),
                                r["nexthop"].as_str()?.to_owned(),
                            ))
                        })
                        .collect(),
                    dhcp: s.enable_dhcp,
                })
            })
            .collect();
        ports.push(Port {
            id: p.row.id.clone(),
            mac: p.row.mac_address.clone(),
            network_id: net.id.clone(),
            mtu: u32::try_from(net.mtu).unwrap_or(1500),
            addresses,
        });
    }
    use base64::Engine as _;
    let user_data = match row.user_data.as_deref().filter(|u| !u.is_empty()) {
        Some(b64) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    Error::internal(format!("the user data of instance {uuid}"), e.to_string())
                })?,
        ),
        None => None,
    };
    Ok(Some(InstanceView {
        key: row.key_name.clone().zip(row.key_data.clone()),
        uuid: row.uuid,
        name: row.display_name,
        hostname: row.hostname,
        project_id: row.project_id,
        launch_index: row.launch_index,
        availability_zone: row.availability_zone.unwrap_or_default(),
        reservation_id: row.reservation_id,
        image_ref: row.image_ref,
        flavor_name: row.flavor_name,
        ephemeral: row.ephemeral_gb > 0,
        swap: row.swap_mb > 0,
        root_device_name: row.root_device_name.unwrap_or_else(|| "/dev/vda".into()),
        user_data,
        meta,
        security_groups,
        ports,
    }))
}

/// Instances' views kept for `[metadata] cache_expiration_secs`, as Nova
/// caches them: a guest's many requests at boot read the database once.
pub struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<CacheKey, (Instant, Arc<InstanceView>)>>,
}

/// (instance uuid, project id).
type CacheKey = (String, String);

/// Entries beyond which expired ones are swept.
const CACHE_SWEEP_AT: usize = 4096;

impl Cache {
    pub fn new(ttl: Duration) -> Cache {
        Cache {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// [`load`], from memory when loaded less than the time-out ago.
    pub async fn get(
        &self,
        app: &App,
        uuid: &str,
        project_id: &str,
    ) -> Result<Option<Arc<InstanceView>>> {
        let key = (uuid.to_owned(), project_id.to_owned());
        if !self.ttl.is_zero()
            && let Some((at, v)) = self.entries.lock().expect("cache").get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(v.clone()));
        }
        let Some(view) = load(app, uuid, project_id).await?.map(Arc::new) else {
            return Ok(None);
        };
        if !self.ttl.is_zero() {
            let mut entries = self.entries.lock().expect("cache");
            if entries.len() >= CACHE_SWEEP_AT {
                entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            }
            entries.insert(key, (Instant::now(), view.clone()));
        }
        Ok(Some(view))
    }
}

/// The instance's posted password (`""` when none).
pub async fn password(app: &App, uuid: &str) -> Result<String> {
    Ok(passwords::get(app.db.pool(), uuid)
        .await?
        .unwrap_or_default())
}

/// A guest posts its password: accepted once (409 after that, until an
/// admin or the owner clears it), at most `[metadata] max_password_bytes`.
pub async fn post_password(app: &App, uuid: &str, body: &[u8]) -> Result<()> {
    let c = &app.config.metadata;
    if !c.enable_instance_password {
        return Err(Error::not_found(
            "Posting a password is not enabled on this cloud.",
        ));
    }
    if body.len() > c.max_password_bytes {
        return Err(Error::bad_request(format!(
            "Request is too large: a password is at most {} bytes.",
            c.max_password_bytes
        )));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| Error::bad_request("The password is not UTF-8 text."))?;
    if !passwords::set_once(app.db.pool(), uuid, text).await? {
        return Err(Error::conflict(
            "The instance's password is already set; clear it with os-server-password first.",
        ));
    }
    Ok(())
}

fn at_least(version: &str, since: &str) -> bool {
    // Dated versions compare as strings.
    version >= since
}

/// A short id as EC2 shows it (`i-` / `ami-` and 8 hex digits of the uuid).
fn ec2_id(prefix: &str, uuid: &str) -> String {
    let hex: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("{prefix}-{hex:0>8}")
}

/// The interface name a guest's link is known by (Neutron's tap name).
fn link_id(port_id: &str) -> String {
    format!("tap{}", &port_id[..port_id.len().min(11)])
}

impl InstanceView {
    /// The files of one OpenStack version's folder.
    pub fn openstack_files(&self, version: &str) -> Vec<&'static str> {
        let mut f = vec!["meta_data.json"];
        if self.user_data.is_some() {
            f.push("user_data");
        }
        if at_least(version, GRIZZLY) {
            f.push("password");
        }
        if at_least(version, HAVANA) {
            f.push("vendor_data.json");
        }
        if at_least(version, LIBERTY) {
            f.push("network_data.json");
        }
        if at_least(version, NEWTON_TWO) {
            f.push("vendor_data2.json");
        }
        f
    }

    /// `meta_data.json` at `version`.
    pub fn meta_data(&self, version: &str) -> Value {
        let mut m = json!({
            "uuid": self.uuid,
            "meta": self.meta,
            "hostname": self.hostname,
            "name": self.name,
            "launch_index": self.launch_index,
            "availability_zone": self.availability_zone,
        });
        if let Some((name, key)) = &self.key {
            m["public_keys"] = json!({ name: key });
            m["keys"] = json!([{"name": name, "type": "ssh", "data": key}]);
        }
        if at_least(version, GRIZZLY) {
            m["random_seed"] = Value::String(random_seed());
        }
        if at_least(version, LIBERTY) {
            m["project_id"] = Value::String(self.project_id.clone());
        }
        if at_least(version, NEWTON_ONE) {
            m["devices"] = json!([]);
        }
        m
    }

    /// `network_data.json`: links (the ports), networks (their addresses)
    /// and services (DNS).
    pub fn network_data(&self) -> Value {
        let mut links = Vec::new();
        let mut networks = Vec::new();
        let mut services: Vec<Value> = Vec::new();
        for p in &self.ports {
            let link = link_id(&p.id);
            links.push(json!({
                "id": link,
                "vif_id": p.id,
                "type": "tap",
                "mtu": p.mtu,
                "ethernet_mac_address": p.mac,
            }));
            for a in &p.addresses {
                let n = networks.len();
                let mut net = json!({
                    "id": format!("network{n}"),
                    "link": link,
                    "network_id": p.network_id,
                });
                if a.dhcp && a.ip_version == 4 {
                    net["type"] = json!("ipv4_dhcp");
                } else {
                    let mut routes: Vec<Value> = Vec::new();
                    if let Some(gw) = &a.gateway {
                        let any = if a.ip_version == 4 { "0.0.0.0" } else { "::" };
                        routes.push(json!({"network": any, "netmask": any, "gateway": gw}));
                    }
                    for (network, netmask, hop) in &a.host_routes {
                        routes
                            .push(json!({"network": network, "netmask": netmask, "gateway": hop}));
                    }
                    net["type"] = json!(format!("ipv{}", a.ip_version));
                    net["ip_address"] = json!(a.ip);
                    net["netmask"] = json!(a.netmask);
                    net["routes"] = json!(routes);
                    net["services"] = json!(
                        a.dns
                            .iter()
                            .map(|d| json!({"type": "dns", "address": d}))
                            .collect::<Vec<_>>()
                    );
                }
                for d in &a.dns {
                    let s = json!({"type": "dns", "address": d});
                    if !services.contains(&s) {
                        services.push(s);
                    }
                }
                networks.push(net);
            }
        }
        json!({"links": links, "networks": networks, "services": services})
    }

    /// The first IPv4 address.
    fn local_ipv4(&self) -> String {
        self.ports
            .iter()
            .flat_map(|p| &p.addresses)
            .find(|a| a.ip_version == 4)
            .map(|a| a.ip.clone())
            .unwrap_or_default()
    }

    /// The EC2 `meta-data` tree.
    pub fn ec2_meta_data(&self) -> Ec2 {
        let mut bdm = BTreeMap::from([
            ("ami".to_owned(), Ec2::leaf("vda")),
            ("root".to_owned(), Ec2::leaf(&self.root_device_name)),
        ]);
        let mut next = 'b';
        if self.ephemeral {
            bdm.insert("ephemeral0".into(), Ec2::leaf(&format!("vd{next}")));
            next = 'c';
        }
        if self.swap {
            bdm.insert("swap".into(), Ec2::leaf(&format!("vd{next}")));
        }
        let mut items = BTreeMap::from([
            (
                "ami-id".to_owned(),
                Ec2::leaf(&ec2_id("ami", &self.image_ref)),
            ),
            (
                "ami-launch-index".to_owned(),
                Ec2::leaf(&self.launch_index.to_string()),
            ),
            ("block-device-mapping".to_owned(), Ec2::Dir(bdm)),
            ("hostname".to_owned(), Ec2::leaf(&self.hostname)),
            ("instance-action".to_owned(), Ec2::leaf("none")),
            (
                "instance-id".to_owned(),
                Ec2::leaf(&ec2_id("i", &self.uuid)),
            ),
            ("instance-type".to_owned(), Ec2::leaf(&self.flavor_name)),
            ("local-hostname".to_owned(), Ec2::leaf(&self.hostname)),
            ("local-ipv4".to_owned(), Ec2::leaf(&self.local_ipv4())),
            (
                "placement".to_owned(),
                Ec2::Dir(BTreeMap::from([(
                    "availability-zone".to_owned(),
                    Ec2::leaf(&self.availability_zone),
                )])),
            ),
            ("public-hostname".to_owned(), Ec2::leaf(&self.hostname)),
            ("public-ipv4".to_owned(), Ec2::leaf("")),
            ("reservation-id".to_owned(), Ec2::leaf(&self.reservation_id)),
            (
                "security-groups".to_owned(),
                Ec2::leaf(&self.security_groups.join("\n")),
            ),
        ]);
        if let Some((name, key)) = &self.key {
            items.insert(
                "public-keys".into(),
                Ec2::Keys(
                    name.clone(),
                    Box::new(Ec2::Dir(BTreeMap::from([(
                        "openssh-key".to_owned(),
                        Ec2::leaf(key),
                    )]))),
                ),
            );
        }
        Ec2::Dir(items)
    }
}

/// 512 random bytes, base64 (for the guest's entropy pool).
fn random_seed() -> String {
    use base64::Engine as _;
    let mut b = [0u8; 512];
    getrandom::fill(&mut b).expect("the kernel's random source");
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A node of the EC2 tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Ec2 {
    /// A value.
    Leaf(String),
    /// A folder (listed as its names, folders with a `/`).
    Dir(BTreeMap<String, Ec2>),
    /// `public-keys`: listed as `0=<name>`; `0/` is the key's folder
    /// (`openssh-key`).
    Keys(String, Box<Ec2>),
}

impl Ec2 {
    fn leaf(s: &str) -> Ec2 {
        Ec2::Leaf(s.to_owned())
    }

    /// The node at `path` (`a/b/c`, empty parts ignored).
    pub fn get(&self, path: &str) -> Option<&Ec2> {
        let mut node = self;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            node = match node {
                Ec2::Dir(items) => items.get(part)?,
                Ec2::Keys(_, key) if part == "0" => key,
                Ec2::Keys(..) | Ec2::Leaf(_) => return None,
            };
        }
        Some(node)
    }

    /// What a GET of this node answers.
    pub fn render(&self) -> String {
        match self {
            Ec2::Leaf(v) => v.clone(),
            Ec2::Dir(items) => items
                .iter()
                .map(|(k, v)| match v {
                    Ec2::Leaf(_) => k.clone(),
                    Ec2::Dir(_) | Ec2::Keys(..) => format!("{k}/"),
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Ec2::Keys(name, _) => format!("0={name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> InstanceView {
        InstanceView {
            uuid: "5c2e0d3a-1b2c-4d5e-8f90-123456789abc".into(),
            name: "web-1".into(),
            hostname: "web-1".into(),
            project_id: "p1".into(),
            launch_index: 0,
            availability_zone: "nova".into(),
            reservation_id: "r-abcdefgh".into(),
            image_ref: "9f1e0d3a-aaaa-4d5e-8f90-123456789abc".into(),
            flavor_name: "m1.nano".into(),
            ephemeral: true,
            swap: false,
            root_device_name: "/dev/vda".into(),
            key: Some(("k1".into(), "ssh-ed25519 AAAA k1".into())),
            user_data: Some(b"#!/bin/sh\necho hi\n".to_vec()),
            meta: BTreeMap::from([("role".into(), "web".into())]),
            security_groups: vec!["default".into()],
            ports: vec![Port {
                id: "a1b2c3d4-e5f6-7890-abcd-ef0123456789".into(),
                mac: "fa:16:3e:00:00:05".into(),
                network_id: "n1".into(),
                mtu: 1450,
                addresses: vec![Address {
                    ip: "10.0.0.5".into(),
                    ip_version: 4,
                    netmask: "255.255.255.0".into(),
                    gateway: Some("10.0.0.1".into()),
                    dns: vec!["10.0.0.2".into()],
                    host_routes: vec![(
                        "192.168.0.0".into(),
                        "255.255.0.0".into(),
                        "10.0.0.254".into(),
                    )],
                    dhcp: false,
                }],
            }],
        }
    }

    #[test]
    fn versions() {
        assert_eq!(openstack_version("latest"), Some("2018-08-27"));
        assert_eq!(openstack_version("2013-04-04"), Some("2013-04-04"));
        assert_eq!(openstack_version("2013-04-05"), None);
        assert!(ec2_version("2009-04-04") && ec2_version("latest"));
        assert!(!ec2_version("2010-01-01") && !ec2_version("openstack"));
    }

    #[test]
    fn meta_data_fields_follow_the_version() {
        let v = view();
        let old = v.meta_data("2012-08-10");
        assert_eq!(old["uuid"], v.uuid.as_str());
        assert_eq!(old["meta"]["role"], "web");
        assert_eq!(old["public_keys"]["k1"], "ssh-ed25519 AAAA k1");
        assert!(old.get("random_seed").is_none() && old.get("project_id").is_none());
        let new = v.meta_data("2018-08-27");
        assert_eq!(new["project_id"], "p1");
        assert_eq!(new["devices"], json!([]));
        assert_eq!(new["keys"][0]["data"], "ssh-ed25519 AAAA k1");
        use base64::Engine as _;
        let seed = base64::engine::general_purpose::STANDARD
            .decode(new["random_seed"].as_str().unwrap())
            .unwrap();
        assert_eq!(seed.len(), 512);
        assert_eq!(
            v.openstack_files("2012-08-10"),
            vec!["meta_data.json", "user_data"]
        );
        assert_eq!(
            v.openstack_files("2018-08-27"),
            vec![
                "meta_data.json",
                "user_data",
                "password",
                "vendor_data.json",
                "network_data.json",
                "vendor_data2.json"
            ]
        );
    }

    #[test]
    fn network_data_has_links_addresses_routes_and_dns() {
        let n = view().network_data();
        assert_eq!(n["links"][0]["id"], "tapa1b2c3d4-e5");
        assert_eq!(n["links"][0]["ethernet_mac_address"], "fa:16:3e:00:00:05");
        assert_eq!(n["links"][0]["mtu"], 1450);
        let net = &n["networks"][0];
        assert_eq!(net["type"], "ipv4");
        assert_eq!(net["ip_address"], "10.0.0.5");
        assert_eq!(net["netmask"], "255.255.255.0");
        assert_eq!(
            net["routes"],
            json!([
                {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"},
                {"network": "192.168.0.0", "netmask": "255.255.0.0", "gateway": "10.0.0.254"}
            ])
        );
        assert_eq!(
            n["services"],
            json!([{"type": "dns", "address": "10.0.0.2"}])
        );
        let mut dhcp = view();
        dhcp.ports[0].addresses[0].dhcp = true;
        let n = dhcp.network_data();
        assert_eq!(n["networks"][0]["type"], "ipv4_dhcp");
        assert!(n["networks"][0].get("ip_address").is_none());
    }

    #[test]
    fn the_ec2_tree() {
        let t = view().ec2_meta_data();
        let root = t.render();
        for item in [
            "ami-id",
            "block-device-mapping/",
            "instance-id",
            "local-ipv4",
            "placement/",
            "public-keys/",
        ] {
            assert!(root.lines().any(|l| l == item), "{item} in\n{root}");
        }
        assert_eq!(t.get("instance-id").unwrap().render(), "i-5c2e0d3a");
        assert_eq!(t.get("ami-id").unwrap().render(), "ami-9f1e0d3a");
        assert_eq!(t.get("local-ipv4").unwrap().render(), "10.0.0.5");
        assert_eq!(
            t.get("placement/availability-zone").unwrap().render(),
            "nova"
        );
        assert_eq!(t.get("public-keys").unwrap().render(), "0=k1");
        assert_eq!(
            t.get("public-keys/0/openssh-key").unwrap().render(),
            "ssh-ed25519 AAAA k1"
        );
        assert_eq!(t.get("public-keys/0").unwrap().render(), "openssh-key");
        assert_eq!(
            t.get("block-device-mapping/ephemeral0").unwrap().render(),
            "vdb"
        );
        assert!(t.get("nothing").is_none());
        assert!(t.get("local-ipv4/deeper").is_none());
    }
}
