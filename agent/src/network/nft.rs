//! Security groups and anti-spoofing with nftables: one `bridge`-family
//! table per port, replaced atomically whenever the port's groups change.
//!
//! ```text
//!  table bridge mica_<tap>
//!    forward  (VM ↔ VM on the bridge)  iifname <tap> → from_vm; oifname <tap> → to_vm
//!    input    (VM → host)              iifname <tap> → from_vm
//!    output   (host → VM)              oifname <tap> → to_vm
//!    from_vm: source MAC must be the port's; ARP must claim the port's MAC and
//!             IPs; IPv4 must come from the port's IPs (DHCP requests excepted);
//!             no DHCP server replies; other ethertypes dropped; then
//!             established/related flows, then the egress rules, then drop
//!    to_vm:   ARP and DHCP replies pass; established/related flows; the
//!             ingress rules; then drop
//! ```
//!
//! Every port's table sees every frame that touches its tap, so traffic
//! between two VMs passes the sender's egress and the receiver's ingress, as
//! with Neutron's firewall. Rules follow Neutron's model: `direction`,
//! `ethertype`, `protocol` (name or number), a port range (for ICMP the type
//! and code), and a remote IP prefix or a remote group (its members'
//! addresses). With no rule of a direction nothing of that direction passes
//! but replies: the `default` group's rules (egress to anywhere, ingress from
//! the group's members) give Nova's documented behaviour.
//!
//! Every value placed in a ruleset is parsed first (MAC, addresses, prefixes,
//! protocol names, numbers): nothing from a request reaches nft as text.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mica_rpc::compute::{Direction, SecurityGroupRule, SecurityGroupSpec};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("invalid MAC address {0:?}")]
    Mac(String),
    #[error("invalid IP address {0:?}")]
    Address(String),
    #[error("invalid interface name {0:?}")]
    Interface(String),
}

/// A port as its firewall sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortFirewall {
    pub tap: String,
    pub mac: String,
    pub ips: Vec<IpAddr>,
    pub groups: Vec<SecurityGroupSpec>,
}

/// The port's table name.
pub fn table_name(tap: &str) -> String {
    format!("mica_{}", tap.replace(['-', '.'], "_"))
}

/// Checks an interface name (as Linux accepts them, and safe in a ruleset).
pub fn check_ifname(name: &str) -> Result<(), RuleError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RuleError::Interface(name.to_owned()))
    }
}

/// Parses a MAC address into lower-case `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(mac: &str) -> Result<String, RuleError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(mac.to_ascii_lowercase())
    } else {
        Err(RuleError::Mac(mac.to_owned()))
    }
}

/// A parsed `address/prefix` (or a plain address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn parse(s: &str) -> Option<Prefix> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        (len <= max).then_some(Prefix { addr, len })
    }

    /// The network address (host bits cleared), as nft wants it.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    fn nft(&self) -> String {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.len == max {
            self.addr.to_string()
        } else {
            format!("{}/{}", self.network(), self.len)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn ether(self) -> &'static str {
        match self {
            Family::V4 => "ether type ip",
            Family::V6 => "ether type ip6",
        }
    }
    fn addr(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// IP protocol numbers by the names Neutron accepts.
const PROTOCOLS: &[(&str, u8)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("tcp", 6),
    ("egp", 8),
    ("udp", 17),
    ("dccp", 33),
    ("ipv6-encap", 41),
    ("ipv6-route", 43),
    ("ipv6-frag", 44),
    ("rsvp", 46),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ospf", 89),
    ("pgm", 113),
    ("vrrp", 112),
    ("sctp", 132),
    ("udplite", 136),
];

/// The protocol number of a rule's protocol; `None` for "any".
fn protocol_number(p: Option<&str>, family: Family) -> Result<Option<u8>, String> {
    let Some(p) = p.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let lower = p.to_ascii_lowercase();
    if lower == "any" {
        return Ok(None);
    }
    let n = match lower.parse::<u8>() {
        Ok(n) => n,
        Err(_) => PROTOCOLS
            .iter()
            .find(|(name, _)| *name == lower)
            .map(|(_, n)| *n)
            .ok_or_else(|| format!("unknown protocol {p:?}"))?,
    };
    // Neutron lets "icmp" mean ICMPv6 in IPv6 rules.
    Ok(Some(if family == Family::V6 && n == 1 {
        58
    } else {
        n
    }))
}

/// One rule as an nft rule line (without the verdict); `Ok(None)` when it
/// can match nothing (a remote group without members of its family) and
/// `Err` for a rule that cannot be expressed (it is skipped, with a log line).
pub fn rule_match(
    rule: &SecurityGroupRule,
    groups: &[SecurityGroupSpec],
) -> Result<Option<String>, String> {
    let family = match rule.ethertype.as_str() {
        "IPv4" | "ipv4" => Family::V4,
        "IPv6" | "ipv6" => Family::V6,
        other => return Err(format!("unknown ethertype {other:?}")),
    };
    let mut m = vec![family.ether().to_owned()];
    let peer = match rule.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    if let Some(prefix) = rule.remote_ip_prefix.as_deref().filter(|p| !p.is_empty()) {
        let p =
            Prefix::parse(prefix).ok_or_else(|| format!("invalid remote_ip_prefix {prefix:?}"))?;
        if !family.matches(&p.addr) {
            return Err(format!(
                "remote_ip_prefix {prefix} is not an {} prefix",
                rule.ethertype
            ));
        }
        if p.len > 0 {
            m.push(format!("{} {peer} {}", family.addr(), p.nft()));
        }
    } else if let Some(group_id) = rule.remote_group_id.as_deref() {
        let Some(group) = groups.iter().find(|g| g.id == group_id) else {
            return Err(format!("remote group {group_id} is unknown here"));
        };
        let members: BTreeSet<IpAddr> = group
            .member_ips
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .filter(|ip| family.matches(ip))
            .collect();
        if members.is_empty() {
            return Ok(None);
        }
        let list: Vec<String> = members.iter().map(|ip| ip.to_string()).collect();
        m.push(format!(
            "{} {peer} {{ {} }}",
            family.addr(),
            list.join(", ")
        ));
    }
    match protocol_number(rule.protocol.as_deref(), family)? {
        None => {}
        Some(n @ (6 | 17 | 132 | 33 | 136)) => {
            let name = match n {
                6 => "tcp",
                17 => "udp",
                132 => "sctp",
                33 => "dccp",
                _ => "udplite",
            };
            match (rule.port_range_min, rule.port_range_max) {
                (None, None) => m.push(format!("meta l4proto {name}")),
                (Some(a), None) => m.push(format!("{name} dport {a}")),
                (None, Some(b)) => m.push(format!("{name} dport {b}")),
                (Some(a), Some(b)) if a == b => m.push(format!("{name} dport {a}")),
                (Some(a), Some(b)) if a < b => m.push(format!("{name} dport {a}-{b}")),
                (Some(a), Some(b)) => return Err(format!("port range {a}-{b} is reversed")),
            }
        }
        Some(n @ (1 | 58)) => {
            let name = if n == 1 { "icmp" } else { "icmpv6" };
            match (rule.port_range_min, rule.port_range_max) {
                (Some(t), code) if t <= 255 => {
                    m.push(format!("{name} type {t}"));
                    if let Some(c) = code {
                        if c > 255 {
                            return Err(format!("ICMP code {c} is out of range"));
                        }
                        m.push(format!("{name} code {c}"));
                    }
                }
                (Some(t), _) => return Err(format!("ICMP type {t} is out of range")),
                (None, _) => m.push(format!(
                    "meta l4proto {}",
                    if n == 1 { "icmp" } else { "ipv6-icmp" }
                )),
            }
        }
        Some(n) => m.push(format!("meta l4proto {n}")),
    }
    Ok(Some(m.join(" ")))
}

/// The port's whole table.
pub fn port_table(fw: &PortFirewall) -> Result<String, RuleError> {
    check_ifname(&fw.tap)?;
    let mac = parse_mac(&fw.mac)?;
    let tap = &fw.tap;
    let v4: Vec<String> = fw
        .ips
        .iter()
        .filter(|ip| ip.is_ipv4())
        .map(|ip| ip.to_string())
        .collect();
    let v6: Vec<String> = fw
        .ips
        .iter()
        .filter(|ip| ip.is_ipv6())
        .map(|ip| ip.to_string())
        .collect();

    let mut s = String::new();
    let name = table_name(tap);
    let _ = writeln!(s, "table bridge {name} {{");
    let _ = writeln!(
        s,
        "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{tap}\" jump from_vm\n    oifname \"{tap}\" jump to_vm\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname \"{tap}\" jump from_vm\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain output {{\n    type filter hook output priority 0; policy accept;\n    oifname \"{tap}\" jump to_vm\n  }}"
    );

    // From the VM: anti-spoofing first, then egress rules.
    let _ = writeln!(s, "  chain from_vm {{");
    let _ = writeln!(s, "    ether saddr != {mac} drop");
    let _ = writeln!(s, "    ether type arp arp saddr ether != {mac} drop");
    let mut arp_ips = vec!["0.0.0.0".to_owned()];
    arp_ips.extend(v4.iter().cloned());
    let _ = writeln!(
        s,
        "    ether type arp arp saddr ip != {{ {} }} drop",
        arp_ips.join(", ")
    );
    let _ = writeln!(s, "    ether type arp accept");
    let _ = writeln!(
        s,
        "    ether type ip udp sport 68 udp dport 67 accept comment \"DHCP requests\""
    );
    if v4.is_empty() {
        let _ = writeln!(s, "    ether type ip drop");
    } else {
        let _ = writeln!(
            s,
            "    ether type ip ip saddr != {{ {} }} drop",
            v4.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "    ether type ip udp sport 67 udp dport 68 drop comment \"no DHCP servers in guests\""
    );
    if v6.is_empty() {
        let _ = writeln!(s, "    ether type ip6 drop");
    } else {
        let _ = writeln!(
            s,
            "    ether type ip6 ip6 saddr != {{ fe80::/10, {} }} drop",
            v6.join(", ")
        );
        let _ = writeln!(
            s,
            "    ether type ip6 icmpv6 type nd-router-advert drop comment \"no routers in guests\""
        );
        let _ = writeln!(
            s,
            "    ether type ip6 icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} accept"
        );
    }
    let _ = writeln!(s, "    ether type != {{ ip, ip6, arp }} drop");
    let _ = writeln!(s, "    ct state invalid drop");
    let _ = writeln!(s, "    ct state established,related accept");
    write_rules(&mut s, fw, Direction::Egress);
    let _ = writeln!(s, "    drop\n  }}");

    // To the VM: ARP, DHCP replies, replies, ingress rules.
    let _ = writeln!(s, "  chain to_vm {{");
    let _ = writeln!(s, "    ether type arp accept");
    let _ = writeln!(
        s,
        "    ether type ip udp sport 67 udp dport 68 accept comment \"DHCP replies\""
    );
    if !v6.is_empty() {
        let _ = writeln!(
            s,
            "    ether type ip6 icmpv6 type {{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept"
        );
    }
    let _ = writeln!(s, "    ct state invalid drop");
    let _ = writeln!(s, "    ct state established,related accept");
    write_rules(&mut s, fw, Direction::Ingress);
    let _ = writeln!(s, "    drop\n  }}");
    let _ = writeln!(s, "}}");
    Ok(s)
}

fn write_rules(s: &mut String, fw: &PortFirewall, direction: Direction) {
    let mut seen = BTreeSet::new();
    for group in &fw.groups {
        for rule in group.rules.iter().filter(|r| r.direction == direction) {
            match rule_match(rule, &fw.groups) {
                Ok(Some(m)) => {
                    if seen.insert(m.clone()) {
                        let _ = writeln!(s, "    {m} accept");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    group = %group.id,
                    rule = %rule.id,
                    tap = %fw.tap,
                    "security group rule skipped: {e}"
                ),
            }
        }
    }
}

/// An nft script that replaces the port's table in one transaction (made
/// empty first so that `delete` never fails).
pub fn replace_script(fw: &PortFirewall) -> Result<String, RuleError> {
    let name = table_name(&fw.tap);
    Ok(format!(
        "table bridge {name} {{}}\ndelete table bridge {name}\n{}",
        port_table(fw)?
    ))
}

/// An nft script that removes the port's table if it exists.
pub fn delete_script(tap: &str) -> String {
    let name = table_name(tap);
    format!("table bridge {name} {{}}\ndelete table bridge {name}\n")
}

/// The NAT table of a network: masquerade what leaves `cidr` for elsewhere.
pub fn nat_table_name(bridge: &str) -> String {
    format!("mica_nat_{}", bridge.replace(['-', '.'], "_"))
}

/// An nft script that (re)creates a network's NAT table.
pub fn nat_script(
    bridge: &str,
    cidrs: &[Prefix],
    out_interface: Option<&str>,
) -> Result<String, RuleError> {
    check_ifname(bridge)?;
    if let Some(i) = out_interface {
        check_ifname(i)?;
    }
    let name = nat_table_name(bridge);
    let mut s = format!("table ip {name} {{}}\ndelete table ip {name}\ntable ip {name} {{\n");
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for c in cidrs.iter().filter(|c| c.addr.is_ipv4()) {
        let net = c.nft();
        let out = match out_interface {
            Some(i) => format!("oifname \"{i}\""),
            None => format!("oifname != \"{bridge}\""),
        };
        let _ = writeln!(s, "    ip saddr {net} ip daddr != {net} {out} masquerade");
    }
    s.push_str("  }\n}\n");
    Ok(s)
}

/// An nft script that removes a network's NAT table if it exists.
pub fn nat_delete_script(bridge: &str) -> String {
    let name = nat_table_name(bridge);
    format!("table ip {name} {{}}\ndelete table ip {name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(direction: Direction, ethertype: &str) -> SecurityGroupRule {
        SecurityGroupRule {
            id: "r".into(),
            direction,
            ethertype: ethertype.into(),
            protocol: None,
            port_range_min: None,
            port_range_max: None,
            remote_ip_prefix: None,
            remote_group_id: None,
        }
    }

    /// Nova's `default` group: all egress, ingress from the group's members.
    pub(crate) fn default_group(members: &[&str]) -> SecurityGroupSpec {
        let mut from_group_v4 = rule(Direction::Ingress, "IPv4");
        from_group_v4.remote_group_id = Some("sg-default".into());
        let mut from_group_v6 = rule(Direction::Ingress, "IPv6");
        from_group_v6.remote_group_id = Some("sg-default".into());
        SecurityGroupSpec {
            id: "sg-default".into(),
            name: "default".into(),
            rules: vec![
                rule(Direction::Egress, "IPv4"),
                rule(Direction::Egress, "IPv6"),
                from_group_v4,
                from_group_v6,
            ],
            member_ips: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    fn port(groups: Vec<SecurityGroupSpec>) -> PortFirewall {
        PortFirewall {
            tap: "tap5c2e0d3a-1b".into(),
            mac: "FA:16:3E:00:00:05".into(),
            ips: vec!["10.0.0.5".parse().unwrap()],
            groups,
        }
    }

    fn chain<'a>(table: &'a str, name: &str) -> &'a str {
        let start = table
            .find(&format!("chain {name} {{"))
            .unwrap_or_else(|| panic!("no chain {name} in\n{table}"));
        let end = table[start..].find("\n  }").unwrap() + start;
        &table[start..end]
    }

    #[test]
    fn the_default_group_allows_egress_and_members_in() {
        let t = port_table(&port(vec![default_group(&[
            "10.0.0.5", "10.0.0.9", "fd00::9",
        ])]))
        .unwrap();
        assert!(t.starts_with("table bridge mica_tap5c2e0d3a_1b {"), "{t}");
        let egress = chain(&t, "from_vm");
        assert!(egress.contains("    ether type ip accept\n"), "{egress}");
        // IPv6 egress is allowed by the group but the port has no IPv6
        // address, so anti-spoofing drops it before.
        let v6_drop = egress.find("ether type ip6 drop").unwrap();
        assert!(v6_drop < egress.find("ether type ip6 accept").unwrap());
        let ingress = chain(&t, "to_vm");
        assert!(
            ingress.contains("ether type ip ip saddr { 10.0.0.5, 10.0.0.9 } accept"),
            "{ingress}"
        );
        assert!(
            ingress.contains("ether type ip6 ip6 saddr { fd00::9 } accept"),
            "{ingress}"
        );
        assert!(ingress.trim_end().ends_with("drop"), "{ingress}");
        // Nothing else comes in: no rule accepts TCP 22 from anywhere.
        assert!(!ingress.contains("tcp dport"), "{ingress}");
    }

    #[test]
    fn anti_spoofing_pins_mac_and_ips() {
        let t = port_table(&port(vec![])).unwrap();
        let from = chain(&t, "from_vm");
        let lines: Vec<&str> = from.lines().map(str::trim).collect();
        // MAC first, lower-cased; ARP pinned; IPv4 source pinned after the
        // DHCP-request exception; replies only after all of that.
        let pos = |needle: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle:?} not in\n{from}"))
        };
        assert_eq!(pos("ether saddr != fa:16:3e:00:00:05 drop"), 1);
        assert!(
            pos("ether type arp arp saddr ether != fa:16:3e:00:00:05 drop")
                < pos("ether type arp accept")
        );
        assert!(
            pos("ether type arp arp saddr ip != { 0.0.0.0, 10.0.0.5 } drop")
                < pos("ether type arp accept")
        );
        assert!(
            pos("ether type ip udp sport 68 udp dport 67 accept")
                < pos("ether type ip ip saddr != { 10.0.0.5 } drop")
        );
        assert!(
            pos("ether type ip ip saddr != { 10.0.0.5 } drop")
                < pos("ct state established,related accept")
        );
        assert!(
            pos("ether type ip udp sport 67 udp dport 68 drop")
                < pos("ct state established,related accept")
        );
        assert!(
            pos("ether type != { ip, ip6, arp } drop") < pos("ct state established,related accept")
        );
        // No group: nothing but replies leaves or enters.
        assert_eq!(lines.last(), Some(&"drop"));
        assert_eq!(from.matches(" accept").count(), 3, "{from}");
        // Hooks for VM↔VM, VM→host and host→VM.
        assert!(chain(&t, "forward").contains("iifname \"tap5c2e0d3a-1b\" jump from_vm"));
        assert!(chain(&t, "forward").contains("oifname \"tap5c2e0d3a-1b\" jump to_vm"));
        assert!(chain(&t, "input").contains("iifname \"tap5c2e0d3a-1b\" jump from_vm"));
        assert!(chain(&t, "output").contains("oifname \"tap5c2e0d3a-1b\" jump to_vm"));
    }

    #[test]
    fn rules_translate_like_neutrons() {
        let groups = vec![default_group(&["10.0.0.7"])];
        let mut r = rule(Direction::Ingress, "IPv4");
        r.protocol = Some("tcp".into());
        r.port_range_min = Some(22);
        r.port_range_max = Some(22);
        r.remote_ip_prefix = Some("0.0.0.0/0".into());
        assert_eq!(
            rule_match(&r, &groups).unwrap().unwrap(),
            "ether type ip tcp dport 22"
        );
        r.port_range_max = Some(80);
        r.remote_ip_prefix = Some("192.168.7.9/24".into());
        assert_eq!(
            rule_match(&r, &groups).unwrap().unwrap(),
            "ether type ip ip saddr 192.168.7.0/24 tcp dport 22-80"
        );
        r.port_range_min = None;
        r.port_range_max = None;
        r.protocol = Some("17".into());
        r.remote_ip_prefix = Some("10.1.2.3".into());
        assert_eq!(
            rule_match(&r, &groups).unwrap().unwrap(),
            "ether type ip ip saddr 10.1.2.3 meta l4proto udp"
        );
        // ICMP: type and code in the port fields.
        let mut icmp = rule(Direction::Ingress, "IPv4");
        icmp.protocol = Some("icmp".into());
        assert_eq!(
            rule_match(&icmp, &groups).unwrap().unwrap(),
            "ether type ip meta l4proto icmp"
        );
        icmp.port_range_min = Some(8);
        icmp.port_range_max = Some(0);
        assert_eq!(
            rule_match(&icmp, &groups).unwrap().unwrap(),
            "ether type ip icmp type 8 icmp code 0"
        );
        // "icmp" in an IPv6 rule is ICMPv6.
        let mut icmp6 = rule(Direction::Egress, "IPv6");
        icmp6.protocol = Some("icmp".into());
        icmp6.remote_ip_prefix = Some("fd00::/8".into());
        assert_eq!(
            rule_match(&icmp6, &groups).unwrap().unwrap(),
            "ether type ip6 ip6 daddr fd00::/8 meta l4proto ipv6-icmp"
        );
        // Other protocols by number.
        let mut gre = rule(Direction::Egress, "IPv4");
        gre.protocol = Some("gre".into());
        assert_eq!(
            rule_match(&gre, &groups).unwrap().unwrap(),
            "ether type ip meta l4proto 47"
        );
        // A remote group with no member of the family matches nothing.
        let mut g = rule(Direction::Ingress, "IPv6");
        g.remote_group_id = Some("sg-default".into());
        assert_eq!(rule_match(&g, &groups).unwrap(), None);
        // Errors: never pasted into the ruleset.
        let mut bad = rule(Direction::Ingress, "IPv4");
        bad.remote_ip_prefix = Some("10.0.0.0/8; flush ruleset".into());
        assert!(rule_match(&bad, &groups).is_err());
        bad.remote_ip_prefix = Some("fd00::/8".into());
        assert!(rule_match(&bad, &groups).is_err());
        bad.remote_ip_prefix = None;
        bad.protocol = Some("tcp; drop".into());
        assert!(rule_match(&bad, &groups).is_err());
        let mut reversed = rule(Direction::Ingress, "IPv4");
        reversed.protocol = Some("tcp".into());
        reversed.port_range_min = Some(80);
        reversed.port_range_max = Some(22);
        assert!(rule_match(&reversed, &groups).is_err());
        let mut unknown_group = rule(Direction::Ingress, "IPv4");
        unknown_group.remote_group_id = Some("sg-other".into());
        assert!(rule_match(&unknown_group, &groups).is_err());
    }

    #[test]
    fn an_added_rule_opens_the_port_and_duplicates_collapse() {
        let mut sg = default_group(&["10.0.0.5"]);
        let mut ssh = rule(Direction::Ingress, "IPv4");
        ssh.protocol = Some("tcp".into());
        ssh.port_range_min = Some(22);
        ssh.port_range_max = Some(22);
        ssh.remote_ip_prefix = Some("0.0.0.0/0".into());
        sg.rules.push(ssh.clone());
        let mut other = default_group(&["10.0.0.5"]);
        other.id = "sg-2".into();
        other.rules = vec![ssh];
        let t = port_table(&port(vec![sg, other])).unwrap();
        let ingress = chain(&t, "to_vm");
        assert_eq!(
            ingress.matches("ether type ip tcp dport 22 accept").count(),
            1,
            "{ingress}"
        );
    }

    #[test]
    fn bad_port_values_are_refused() {
        let mut p = port(vec![]);
        p.mac = "fa:16:3e:00:00".into();
        assert!(matches!(port_table(&p), Err(RuleError::Mac(_))));
        let mut p = port(vec![]);
        p.tap = "tap\"; flush ruleset".into();
        assert!(matches!(port_table(&p), Err(RuleError::Interface(_))));
    }

    #[test]
    fn replacing_is_one_transaction_and_nat_masquerades_the_subnet() {
        let s = replace_script(&port(vec![])).unwrap();
        assert!(s.starts_with(
            "table bridge mica_tap5c2e0d3a_1b {}\ndelete table bridge mica_tap5c2e0d3a_1b\ntable bridge mica_tap5c2e0d3a_1b {\n"
        ));
        assert_eq!(
            delete_script("tap1"),
            "table bridge mica_tap1 {}\ndelete table bridge mica_tap1\n"
        );
        let nat = nat_script("brq1234", &[Prefix::parse("10.0.0.1/24").unwrap()], None).unwrap();
        assert!(
            nat.contains("type nat hook postrouting priority srcnat;"),
            "{nat}"
        );
        assert!(
            nat.contains(
                "ip saddr 10.0.0.0/24 ip daddr != 10.0.0.0/24 oifname != \"brq1234\" masquerade"
            ),
            "{nat}"
        );
        let nat = nat_script(
            "brq1234",
            &[Prefix::parse("10.0.0.0/24").unwrap()],
            Some("eth0"),
        )
        .unwrap();
        assert!(nat.contains("oifname \"eth0\" masquerade"), "{nat}");
    }

    #[test]
    fn prefixes_parse_and_normalize() {
        let p = Prefix::parse("10.1.2.3/8").unwrap();
        assert_eq!(p.network().to_string(), "10.0.0.0");
        assert_eq!(p.nft(), "10.0.0.0/8");
        assert_eq!(Prefix::parse("10.1.2.3").unwrap().nft(), "10.1.2.3");
        assert_eq!(Prefix::parse("0.0.0.0/0").unwrap().len, 0);
        assert_eq!(Prefix::parse("fd00::1/64").unwrap().nft(), "fd00::/64");
        assert!(Prefix::parse("10.0.0.0/33").is_none());
        assert!(Prefix::parse("nope").is_none());
    }
}
