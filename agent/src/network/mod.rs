//! Instance networking on a compute host: a flat network is a Linux bridge
//! on each host that has ports on it, and each port a tap on that bridge.
//! Where the network's gateway address and DHCP server live depends on whose
//! network it is.
//!
//! A host-routed network (shared, external or default: the provider kind,
//! made by an admin) has them on the host, as nova-network's multi-host
//! FlatDHCP did:
//!
//! ```text
//!             host (the subnet's gateway address on the bridge)
//!                │            dnsmasq (DHCP, static hosts)   NAT (nft, optional)
//!   brq<net id> ─┼───────────────┬───────────────┐
//!             tap<port id>   tap<port id>    (an uplink, later)
//!                │               │            per-port nft table: anti-spoofing
//!              VMM             VMM            and security groups
//! ```
//!
//! An isolated network (a project's own) keeps them in a network namespace
//! of its own, as Neutron's DHCP agent does (`qdhcp-<id>`): two projects may
//! choose the same CIDR, their guests never reach the host's own addresses,
//! and the host's routes, addresses and rules stay exactly as they were.
//!
//! ```text
//!   netns mica-net-<net id>:  gw (gateway addresses)  dnsmasq  lo
//!                              │ veth
//!   host:   brq<net id> ── gwb<net id>         (no address, no IPv6)
//!                │
//!             tap<port id> … (as above)
//! ```
//!
//! Bridges, taps, links, namespaces and tables are named from the network
//! and port ids, so every operation is idempotent and a restarted agent
//! finds what it made. A name that exists but is not what the agent would
//! have made (a bridge that is not a bridge, a tap that is not a tap) is an
//! error, never reused or removed.

pub mod dnsmasq;
pub mod metadata;
pub mod nft;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use mica_rpc::compute::{NetworkSpec, PortSpec, SecurityGroupSpec};
use tokio::io::AsyncWriteExt as _;

use crate::config::NetworkSection;
use crate::locks::KeyedLocks;
use dnsmasq::{DhcpConfig, DhcpHost, DhcpSubnet, Dnsmasq, DnsmasqError};
use metadata::{MetadataProxy, Place, Requester};
use nft::{Prefix, RuleError};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("interface {0} exists and is not a tap device")]
    NotATap(String),
    #[error("interface {0} exists and is not a bridge")]
    NotABridge(String),
    #[error("interface {0} exists and is not a veth pair's end")]
    NotAVeth(String),
    #[error("network {network}: {message}")]
    Invalid { network: String, message: String },
    #[error("port {port}")]
    Rule {
        port: String,
        #[source]
        source: RuleError,
    },
    #[error("DHCP for network {network}")]
    Dhcp {
        network: String,
        #[source]
        source: DnsmasqError,
    },
    #[error("network state: {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// See the module docs.
pub struct Networking {
    cfg: NetworkSection,
    dir: PathBuf,
    locks: KeyedLocks,
    /// What each network was last made to be (bridge, addresses, DHCP and
    /// NAT): when nothing changed, only the DHCP hosts are updated.
    ensured: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// The metadata proxy, when `[network] metadata_url` is set.
    metadata: Option<MetadataProxy>,
}

/// A name from a prefix and the first 11 characters of an id (Neutron's
/// scheme), with anything an interface name cannot hold replaced.
fn device_name(prefix: &str, id: &str) -> String {
    let tail: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(11)
        .collect();
    format!("{prefix}{tail}")
}

/// A stable, locally administered unicast MAC for a bridge, from its
/// network's id (so the bridge keeps one address whatever ports join it).
pub fn bridge_mac(network_id: &str) -> String {
    // FNV-1a.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

/// The host side of a tap gets the guest's MAC with `fe` as first byte (as
/// libvirt does), so the bridge never confuses the two.
pub fn tap_mac(guest_mac: &str) -> String {
    match guest_mac.split_once(':') {
        Some((_, rest)) => format!("fe:{}", rest.to_ascii_lowercase()),
        None => guest_mac.to_owned(),
    }
}

/// The address the host takes on a subnet's bridge: its gateway, or else
/// the subnet's last host address.
pub fn host_address(cidr: &Prefix, gateway: Option<&str>) -> Option<(Ipv4Addr, u8)> {
    let IpAddr::V4(net) = cidr.network() else {
        return None;
    };
    if cidr.len >= 31 {
        return None;
    }
    if let Some(gw) = gateway.and_then(|g| g.parse::<Ipv4Addr>().ok()) {
        return Some((gw, cidr.len));
    }
    let broadcast = u32::from(net) | (u32::MAX >> cidr.len);
    Some((Ipv4Addr::from(broadcast - 1), cidr.len))
}

/// Where an isolated network's namespace is named from (`ip netns`, then
/// the network's id), as Neutron's `qdhcp-<network id>`.
pub const NAMESPACE_PREFIX: &str = "mica-net-";
/// The prefix of the host end of an isolated network's gateway link.
pub const GATEWAY_LINK_PREFIX: &str = "gwb";
/// The gateway's interface inside an isolated network's namespace.
pub const GATEWAY_LINK: &str = "gw";

/// The MAC of an isolated network's gateway: stable, and not the bridge's
/// (a port with the bridge's own address would never be forwarded to).
pub fn gateway_mac(network_id: &str) -> String {
    bridge_mac(&format!("{network_id}/gateway"))
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Whether an existing link is one end of a veth pair.
async fn is_veth(name: &str) -> bool {
    ip(&["-d", "-o", "link", "show", "dev", name])
        .await
        .is_ok_and(|out| out.split_whitespace().any(|w| w == "veth"))
}

fn iface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn is_tap(name: &str) -> bool {
    Path::new("/sys/class/net")
        .join(name)
        .join("tun_flags")
        .exists()
}

fn is_bridge(name: &str) -> bool {
    Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .exists()
}

async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| NetError::Command {
        command: command.clone(),
        message: e.to_string(),
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| NetError::Command {
                command: command.clone(),
                message: e.to_string(),
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn ip(args: &[&str]) -> Result<String, NetError> {
    run("ip", args, None).await
}

/// Several `ip` commands in one process (`ip -batch -`): each process costs
/// a lot where process start-up is slow (an emulated CPU).
async fn ip_batch(lines: &[String]) -> Result<(), NetError> {
    ip_batch_at(None, lines).await
}

/// [`ip_batch`] inside a network namespace (`ip -n <netns>`).
async fn ip_batch_in(netns: &str, lines: &[String]) -> Result<(), NetError> {
    ip_batch_at(Some(netns), lines).await
}

async fn ip_batch_at(netns: Option<&str>, lines: &[String]) -> Result<(), NetError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut script = lines.join("\n");
    script.push('\n');
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    run("ip", &args, Some(&script)).await.map(|_| ())
}

async fn nft_apply(script: &str) -> Result<(), NetError> {
    run("nft", &["-f", "-"], Some(script)).await.map(|_| ())
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(|source| NetError::Io {
        op: "writing",
        path: path.into(),
        source,
    })
}

impl Networking {
    pub fn new(cfg: &NetworkSection, state_dir: &Path) -> Self {
        Self {
            cfg: cfg.clone(),
            dir: state_dir.join("networks"),
            locks: KeyedLocks::default(),
            ensured: Default::default(),
            metadata: MetadataProxy::new(&cfg.metadata_url, &cfg.metadata_shared_secret),
        }
    }

    pub fn bridge_name(&self, network_id: &str) -> String {
        device_name(&self.cfg.bridge_prefix, network_id)
    }

    pub fn tap_name(&self, port_id: &str) -> String {
        device_name(&self.cfg.tap_prefix, port_id)
    }

    fn network_dir(&self, network_id: &str) -> Result<PathBuf, NetError> {
        crate::store::check_uuid(network_id).map_err(|_| NetError::Invalid {
            network: network_id.to_owned(),
            message: "not a valid network id".into(),
        })?;
        Ok(self.dir.join(network_id))
    }

    /// The network namespace of an isolated network on this host.
    pub fn namespace_name(&self, network_id: &str) -> String {
        format!("{NAMESPACE_PREFIX}{network_id}")
    }

    /// The host end of an isolated network's gateway link (a veth pair:
    /// this end on the bridge, [`GATEWAY_LINK`] in the namespace).
    pub fn gateway_link_name(&self, network_id: &str) -> String {
        device_name(GATEWAY_LINK_PREFIX, network_id)
    }

    /// Makes the network's bridge, gateway addresses, DHCP server (serving
    /// `hosts`) and NAT exist as `net` describes: on the host for a
    /// host-routed network, in the network's namespace for an isolated one.
    pub async fn ensure_network(
        &self,
        net: &NetworkSpec,
        hosts: &[DhcpHost],
    ) -> Result<(), NetError> {
        let _guard = self.locks.lock(&net.id).await;
        if net.network_type != "flat" {
            return Err(NetError::Invalid {
                network: net.id.clone(),
                message: format!(
                    "network type {:?} is not supported (flat)",
                    net.network_type
                ),
            });
        }
        if net.isolated && net.nat {
            return Err(NetError::Invalid {
                network: net.id.clone(),
                message: "an isolated network has no way out to NAT through".into(),
            });
        }
        let dir = self.network_dir(&net.id)?;
        let bridge = self.bridge_name(&net.id);
        let ns = net.isolated.then(|| self.namespace_name(&net.id));
        let veth = self.gateway_link_name(&net.id);
        let mtu = if net.mtu >= 68 { net.mtu } else { 1500 };
        // Links made first (down), then configured: an isolated network's
        // host-side links never come up with an IPv6 address (a route).
        let mut create = Vec::new();
        if iface_exists(&bridge) {
            if !is_bridge(&bridge) {
                return Err(NetError::NotABridge(bridge));
            }
        } else {
            create.push(format!(
                "link add name {bridge} address {} type bridge forward_delay 0 stp_state 0",
                bridge_mac(&net.id)
            ));
        }
        // What the gateway's interface is, and where its addresses go.
        let mut gateway = Vec::new();
        let mut host = Vec::new();
        let serves = match &ns {
            Some(ns) => {
                // (Checked by running `ip` only when this agent has not
                // made the network yet: a process per build is not free.)
                let made = self.ensured.lock().expect("ensured").contains_key(&net.id);
                if iface_exists(&veth) {
                    if !made && !is_veth(&veth).await {
                        return Err(NetError::NotAVeth(veth));
                    }
                } else {
                    create.push(format!(
                        "link add name {veth} mtu {mtu} type veth peer name {GATEWAY_LINK} netns {ns}"
                    ));
                }
                host.push(format!("addr flush dev {bridge}"));
                host.push(format!("link set {veth} master {bridge} mtu {mtu} up"));
                gateway.push("link set lo up".to_owned());
                gateway.push(format!(
                    "link set {GATEWAY_LINK} address {} mtu {mtu} up",
                    gateway_mac(&net.id)
                ));
                if self.metadata.is_some() {
                    gateway.push(format!(
                        "addr replace {}/32 dev {GATEWAY_LINK}",
                        metadata::ADDRESS
                    ));
                }
                GATEWAY_LINK.to_owned()
            }
            None => {
                if self.metadata.is_some() {
                    host.push(format!(
                        "addr replace {}/32 dev {bridge}",
                        metadata::ADDRESS
                    ));
                }
                bridge.clone()
            }
        };
        host.push(format!("link set {bridge} mtu {mtu} up"));

        let mut subnets = Vec::new();
        let mut nat = Vec::new();
        for (n, sub) in net.subnets.iter().filter(|s| s.ip_version == 4).enumerate() {
            let cidr = Prefix::parse(&sub.cidr).ok_or_else(|| NetError::Invalid {
                network: net.id.clone(),
                message: format!("subnet {} has an invalid cidr {:?}", sub.id, sub.cidr),
            })?;
            let Some((addr, len)) = host_address(&cidr, sub.gateway_ip.as_deref()) else {
                continue;
            };
            let line = format!("addr replace {addr}/{len} dev {serves}");
            if ns.is_some() {
                gateway.push(line);
            } else {
                host.push(line);
            }
            nat.push(cidr);
            if sub.enable_dhcp
                && let IpAddr::V4(network) = cidr.network()
            {
                subnets.push(DhcpSubnet {
                    tag: format!("s{n}"),
                    network,
                    prefix_len: cidr.len,
                    router: sub.gateway_ip.as_deref().and_then(|g| g.parse().ok()),
                    metadata_via: self.metadata.is_some().then_some(addr),
                    dns: sub
                        .dns_nameservers
                        .iter()
                        .filter_map(|d| d.parse().ok())
                        .collect(),
                });
            }
        }
        let dhcp = (!subnets.is_empty()).then(|| {
            dnsmasq::config_text(&DhcpConfig {
                interface: serves.clone(),
                dir: dir.clone(),
                subnets,
                lease_s: self.cfg.dhcp_lease_s,
                mtu,
            })
        });
        let nat_script = if net.nat && !nat.is_empty() {
            let out =
                (!self.cfg.nat_interface.is_empty()).then_some(self.cfg.nat_interface.as_str());
            Some(
                nft::nat_script(&bridge, &nat, out).map_err(|source| NetError::Rule {
                    port: bridge.clone(),
                    source,
                })?,
            )
        } else {
            None
        };
        let fingerprint = format!("{create:?}|{host:?}|{gateway:?}|{dhcp:?}|{nat_script:?}");
        let daemon = Dnsmasq::new(&self.cfg.dnsmasq, &dir, ns.as_deref());
        let unchanged = self
            .ensured
            .lock()
            .expect("ensured")
            .get(&net.id)
            .is_some_and(|f| *f == fingerprint)
            && is_bridge(&bridge)
            && ns.as_deref().is_none_or(netns_exists)
            && (dhcp.is_none() || daemon.pid().is_some());
        if !unchanged {
            self.ensured.lock().expect("ensured").remove(&net.id);
            match &ns {
                Some(ns) => {
                    if !netns_exists(ns) {
                        ip(&["netns", "add", ns]).await?;
                    }
                    ip_batch(&create).await?;
                    for link in [&bridge, &veth] {
                        // (A kernel without IPv6 has nothing to disable.)
                        let knob = format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6");
                        if Path::new(&knob).exists() {
                            write_sysctl(&knob, "1")?;
                        }
                    }
                    ip_batch(&host).await?;
                    ip_batch_in(ns, &gateway).await?;
                }
                None => {
                    // A network made isolated before (it has become shared):
                    // its namespace, gateway link and DHCP server go.
                    let old = self.namespace_name(&net.id);
                    if netns_exists(&old) {
                        Dnsmasq::new(&self.cfg.dnsmasq, &dir, Some(&old))
                            .stop()
                            .await;
                        self.remove_namespace(&net.id).await?;
                    }
                    ip_batch(&create).await?;
                    ip_batch(&host).await?;
                }
            }
        }
        match &dhcp {
            None => daemon.stop().await,
            Some(config) => daemon
                .ensure(config, &dnsmasq::hosts_text(hosts))
                .await
                .map_err(|source| NetError::Dhcp {
                    network: net.id.clone(),
                    source,
                })?,
        }
        if let Some(proxy) = &self.metadata {
            let place = match &ns {
                Some(ns) => Place::Namespace(ns.clone()),
                None => Place::Device(bridge.clone()),
            };
            let guests = hosts
                .iter()
                .map(|h| {
                    (
                        IpAddr::V4(h.ip),
                        Requester {
                            instance_uuid: h.instance_uuid.clone(),
                            project_id: h.project_id.clone(),
                        },
                    )
                })
                .collect();
            // A guest without metadata still boots: the failure is logged,
            // the network stands.
            if let Err(e) = proxy.serve(&net.id, place, guests) {
                tracing::error!(network = %net.id, error = %e, "metadata proxy not serving");
            }
        }
        if !unchanged {
            match &nat_script {
                Some(script) => {
                    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
                    nft_apply(script).await?;
                }
                None => nft_apply(&nft::nat_delete_script(&bridge)).await?,
            }
            self.ensured
                .lock()
                .expect("ensured")
                .insert(net.id.clone(), fingerprint);
        }
        Ok(())
    }

    /// Removes an isolated network's gateway link and namespace (if there).
    async fn remove_namespace(&self, network_id: &str) -> Result<(), NetError> {
        // The link first: a namespace's links go when its last user does,
        // later; the bridge must lose this port now.
        let veth = self.gateway_link_name(network_id);
        if iface_exists(&veth) && is_veth(&veth).await {
            ip(&["link", "del", &veth]).await?;
        }
        let ns = self.namespace_name(network_id);
        if netns_exists(&ns) {
            ip(&["netns", "del", &ns]).await?;
        }
        Ok(())
    }

    /// Removes the network from this host: DHCP server, NAT, namespace,
    /// bridge (only if no port is left on it) and state folder.
    pub async fn release_network(&self, network_id: &str) -> Result<(), NetError> {
        let _guard = self.locks.lock(network_id).await;
        self.ensured.lock().expect("ensured").remove(network_id);
        let dir = self.network_dir(network_id)?;
        if let Some(proxy) = &self.metadata {
            proxy.stop(network_id);
        }
        let ns = self.namespace_name(network_id);
        let netns = netns_exists(&ns).then_some(ns.as_str());
        Dnsmasq::new(&self.cfg.dnsmasq, &dir, netns).stop().await;
        let bridge = self.bridge_name(network_id);
        nft_apply(&nft::nat_delete_script(&bridge)).await?;
        self.remove_namespace(network_id).await?;
        if is_bridge(&bridge) {
            let ports = std::fs::read_dir(Path::new("/sys/class/net").join(&bridge).join("brif"))
                .map(|d| d.count())
                .unwrap_or(0);
            if ports == 0 {
                ip(&["link", "del", &bridge]).await?;
            } else {
                tracing::warn!(%bridge, ports, "bridge kept: it still has ports");
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetError::Io {
                op: "removing",
                path: dir,
                source,
            }),
        }
    }

    /// Makes the port's tap (on its network's bridge, which must exist) and
    /// its firewall. Returns the tap's name.
    pub async fn plug_port(&self, port: &PortSpec) -> Result<String, NetError> {
        let tap = self.tap_name(&port.id);
        nft::parse_mac(&port.mac_address).map_err(|source| NetError::Rule {
            port: port.id.clone(),
            source,
        })?;
        let mut lines = Vec::new();
        if iface_exists(&tap) {
            if !is_tap(&tap) {
                return Err(NetError::NotATap(tap));
            }
        } else {
            lines.push(format!("tuntap add dev {tap} mode tap"));
        }
        let bridge = self.bridge_name(&port.network.id);
        let mtu = if port.network.mtu >= 68 {
            port.network.mtu
        } else {
            1500
        };
        lines.push(format!(
            "link set {tap} address {} mtu {mtu} master {bridge} up",
            tap_mac(&port.mac_address)
        ));
        ip_batch(&lines).await?;
        // The host has no business with IPv6 on a guest's tap.
        let _ = write_sysctl(&format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1");
        self.apply_firewall(port, &port.security_groups).await?;
        Ok(tap)
    }

    /// Applies `groups` (and anti-spoofing) to the port's tap, replacing
    /// what was there in one transaction.
    pub async fn apply_firewall(
        &self,
        port: &PortSpec,
        groups: &[SecurityGroupSpec],
    ) -> Result<(), NetError> {
        let tap = self.tap_name(&port.id);
        if !self.cfg.security_groups || !port.port_security_enabled {
            return nft_apply(&nft::delete_script(&tap)).await;
        }
        let ips = port
            .fixed_ips
            .iter()
            .map(|f| {
                f.ip_address.parse::<IpAddr>().map_err(|_| NetError::Rule {
                    port: port.id.clone(),
                    source: RuleError::Address(f.ip_address.clone()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fw = nft::PortFirewall {
            tap,
            mac: port.mac_address.clone(),
            ips,
            groups: groups.to_vec(),
        };
        let script = nft::replace_script(&fw).map_err(|source| NetError::Rule {
            port: port.id.clone(),
            source,
        })?;
        nft_apply(&script).await
    }

    /// Removes the port's firewall and tap (only if it is a tap).
    pub async fn unplug_port(&self, port_id: &str) -> Result<(), NetError> {
        let tap = self.tap_name(port_id);
        nft_apply(&nft::delete_script(&tap)).await?;
        if is_tap(&tap) {
            ip(&["link", "del", &tap]).await?;
        }
        Ok(())
    }

    /// Whether the port's tap exists (for tests and checks).
    pub fn tap_exists(&self, port_id: &str) -> bool {
        is_tap(&self.tap_name(port_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_neutrons_scheme() {
        let n = Networking::new(&NetworkSection::default(), Path::new("/x"));
        assert_eq!(
            n.bridge_name("5c2e0d3a-1b2c-4d5e-8f90-123456789abc"),
            "brq5c2e0d3a-1b"
        );
        assert_eq!(
            n.tap_name("a1b2c3d4-e5f6-7890-abcd-ef0123456789"),
            "tapa1b2c3d4-e5"
        );
        assert!(n.tap_name("a1b2c3d4-e5f6-7890").len() <= 15);
        assert_eq!(n.tap_name("x y"), "tapx_y");
    }

    #[test]
    fn macs() {
        let m = bridge_mac("net-1");
        assert!(m.starts_with("02:"), "{m}");
        assert_eq!(m, bridge_mac("net-1"));
        assert_ne!(m, bridge_mac("net-2"));
        nft::parse_mac(&m).unwrap();
        assert_eq!(tap_mac("FA:16:3E:00:00:05"), "fe:16:3e:00:00:05");
    }

    #[test]
    fn the_host_takes_the_gateway_or_the_last_address() {
        let p = Prefix::parse("10.0.0.0/24").unwrap();
        assert_eq!(
            host_address(&p, Some("10.0.0.1")),
            Some(("10.0.0.1".parse().unwrap(), 24))
        );
        assert_eq!(
            host_address(&p, None),
            Some(("10.0.0.254".parse().unwrap(), 24))
        );
        assert_eq!(
            host_address(&Prefix::parse("10.0.0.0/31").unwrap(), None),
            None
        );
        assert_eq!(
            host_address(&Prefix::parse("fd00::/64").unwrap(), None),
            None
        );
    }
}
