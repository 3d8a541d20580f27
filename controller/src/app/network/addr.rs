//! IP addressing: CIDRs, allocation pools, and picking a free address.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::error::{Error, Result};

/// A network prefix (`10.0.0.0/24`, `fd00::/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address as an integer.
    pub base: u128,
    /// Prefix length.
    pub len: u8,
    /// 4 or 6.
    pub version: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::/n`; host bits must be zero.
    pub fn parse(s: &str) -> Result<Cidr> {
        let bad = || {
            Error::bad_request(format!(
                "Invalid input for cidr. Reason: '{s}' is not a valid IP subnet."
            ))
        };
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let (version, bits, value) = match ip {
            IpAddr::V4(a) => (4u8, 32u8, u128::from(u32::from(a))),
            IpAddr::V6(a) => (6u8, 128u8, u128::from(a)),
        };
        if len > bits {
            return Err(bad());
        }
        let c = Cidr {
            base: value,
            len,
            version,
        };
        if value & !c.mask() != 0 {
            return Err(bad());
        }
        Ok(c)
    }

    fn bits(&self) -> u8 {
        if self.version == 4 { 32 } else { 128 }
    }

    fn mask(&self) -> u128 {
        let host = u32::from(self.bits() - self.len);
        let full = if self.bits() == 128 {
            u128::MAX
        } else {
            (1u128 << self.bits()) - 1
        };
        if host >= 128 {
            0
        } else {
            full & !((1u128 << host) - 1)
        }
    }

    /// The netmask as an address (`255.255.255.0`, `ffff:ffff::`).
    pub fn netmask(&self) -> String {
        to_ip(self.mask(), self.version)
    }

    /// The last address of the prefix.
    pub fn last(&self) -> u128 {
        let host = u32::from(self.bits() - self.len);
        if host >= 128 {
            u128::MAX
        } else {
            self.base | ((1u128 << host) - 1)
        }
    }

    /// Whether `ip` (same version) is inside.
    pub fn contains(&self, ip: u128) -> bool {
        ip >= self.base && ip <= self.last()
    }

    /// Whether two prefixes overlap.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.version == other.version && self.base <= other.last() && other.base <= self.last()
    }

    /// The canonical text.
    pub fn to_text(&self) -> String {
        format!("{}/{}", to_ip(self.base, self.version), self.len)
    }

    /// The usable range for hosts: v4 leaves out the network and broadcast
    /// addresses (for prefixes up to /30), v6 the subnet-router anycast one.
    pub fn host_range(&self) -> (u128, u128) {
        let (first, last) = (self.base, self.last());
        if self.version == 4 {
            if self.len <= 30 {
                (first + 1, last - 1)
            } else {
                (first, last)
            }
        } else if self.len < 128 {
            (first + 1, last)
        } else {
            (first, last)
        }
    }
}

/// Ranges no tenant subnet or gateway may touch: a compute host routes
/// them itself (loopback, link-local — the metadata address
/// 169.254.169.254 is Mica's —, multicast) or they mean "any address".
const RESERVED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified (0.0.0.0/n)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("::/128", "unspecified (::/n)"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

fn reserved_overlap(c: &Cidr) -> Option<(&'static str, &'static str)> {
    RESERVED.iter().copied().find(|(r, _)| {
        Cidr::parse(r)
            .expect("the reserved ranges parse")
            .overlaps(c)
    })
}

/// Refuses (400, Neutron's `InvalidInput`) a tenant subnet CIDR that
/// overlaps a loopback, link-local, multicast or unspecified range.
pub fn check_tenant_cidr(c: &Cidr) -> Result<()> {
    match reserved_overlap(c) {
        None => Ok(()),
        Some((range, what)) => Err(Error::bad_request(format!(
            "Invalid input for operation: {} overlaps the {what} range {range}; such a subnet is not supported.",
            c.to_text()
        ))
        .with_code("InvalidInput")),
    }
}

/// Refuses (400) a gateway address in one of those ranges.
pub fn check_tenant_gateway(ip: u128, version: u8) -> Result<()> {
    let one = Cidr {
        base: ip,
        len: if version == 4 { 32 } else { 128 },
        version,
    };
    match reserved_overlap(&one) {
        None => Ok(()),
        Some((range, what)) => Err(Error::bad_request(format!(
            "Invalid input for gateway_ip. Reason: {} is a {what} address ({range}).",
            to_ip(ip, version)
        ))
        .with_code("InvalidInput")),
    }
}

/// Parses an address, giving (value, version).
pub fn parse_ip(s: &str) -> Option<(u128, u8)> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => Some((u128::from(u32::from(a)), 4)),
        IpAddr::V6(a) => Some((u128::from(a), 6)),
    }
}

/// The text of an address.
pub fn to_ip(v: u128, version: u8) -> String {
    if version == 4 {
        std::net::Ipv4Addr::from(v as u32).to_string()
    } else {
        std::net::Ipv6Addr::from(v).to_string()
    }
}

/// An allocation pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pool {
    /// First address.
    pub start: String,
    /// Last address.
    pub end: String,
}

/// Neutron's default pools: the host range minus the gateway.
pub fn default_pools(cidr: &Cidr, gateway: Option<u128>) -> Vec<Pool> {
    let (first, last) = cidr.host_range();
    let mut ranges = vec![(first, last)];
    if let Some(g) = gateway {
        ranges = ranges
            .into_iter()
            .flat_map(|(a, b)| {
                if g < a || g > b {
                    vec![(a, b)]
                } else {
                    let mut v = vec![];
                    if g > a {
                        v.push((a, g - 1));
                    }
                    if g < b {
                        v.push((g + 1, b));
                    }
                    v
                }
            })
            .collect();
    }
    ranges
        .into_iter()
        .map(|(a, b)| Pool {
            start: to_ip(a, cidr.version),
            end: to_ip(b, cidr.version),
        })
        .collect()
}

/// Validates pools against the CIDR and the gateway: inside the prefix,
/// start ≤ end, no overlap, gateway outside every pool. Returns them as
/// ranges.
pub fn check_pools(
    cidr: &Cidr,
    pools: &[Pool],
    gateway: Option<u128>,
) -> Result<Vec<(u128, u128)>> {
    let mut ranges = Vec::new();
    for p in pools {
        let bad = || Error::bad_request(format!("Invalid allocation pool {}-{}.", p.start, p.end));
        let (a, va) = parse_ip(&p.start).ok_or_else(bad)?;
        let (b, vb) = parse_ip(&p.end).ok_or_else(bad)?;
        if va != cidr.version || vb != cidr.version || a > b {
            return Err(bad());
        }
        if !cidr.contains(a) || !cidr.contains(b) {
            return Err(Error::bad_request(format!(
                "The allocation pool {}-{} spans beyond the subnet cidr {}.",
                p.start,
                p.end,
                cidr.to_text()
            )));
        }
        if let Some(g) = gateway
            && g >= a
            && g <= b
        {
            return Err(Error::new(
                crate::error::Kind::Conflict,
                format!(
                    "Gateway ip {} conflicts with allocation pool {}-{}.",
                    to_ip(g, cidr.version),
                    p.start,
                    p.end
                ),
            ));
        }
        ranges.push((a, b));
    }
    let mut sorted = ranges.clone();
    sorted.sort();
    for w in sorted.windows(2) {
        if w[1].0 <= w[0].1 {
            return Err(Error::bad_request(format!(
                "Found overlapping allocation pools: {} and {}.",
                to_ip(w[0].0, cidr.version),
                to_ip(w[1].0, cidr.version)
            )));
        }
    }
    Ok(ranges)
}

/// The first address of `pools` not in `used`.
pub fn first_free(cidr: &Cidr, pools: &[Pool], used: &[String]) -> Option<String> {
    let used: HashSet<u128> = used
        .iter()
        .filter_map(|u| parse_ip(u))
        .map(|(v, _)| v)
        .collect();
    for p in pools {
        let (Some((a, _)), Some((b, _))) = (parse_ip(&p.start), parse_ip(&p.end)) else {
            continue;
        };
        let mut ip = a;
        while ip <= b {
            if !used.contains(&ip) {
                return Some(to_ip(ip, cidr.version));
            }
            if ip == u128::MAX {
                break;
            }
            ip += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        for (cidr, mask) in [
            ("192.168.0.0/16", "255.255.0.0"),
            ("10.0.0.0/24", "255.255.255.0"),
            ("0.0.0.0/0", "0.0.0.0"),
            ("10.0.0.4/32", "255.255.255.255"),
            ("fd00::/64", "ffff:ffff:ffff:ffff::"),
        ] {
            assert_eq!(Cidr::parse(cidr).unwrap().netmask(), mask, "{cidr}");
        }
    }

    #[test]
    fn reserved_ranges_are_refused() {
        for bad in [
            "127.0.0.0/8",
            "127.0.0.0/24",
            "169.254.0.0/16",
            "169.254.169.0/24",
            "169.0.0.0/8",
            "224.0.0.0/4",
            "239.1.0.0/16",
            "0.0.0.0/1",
            "0.0.0.0/0",
            "0.0.0.0/8",
            "::1/128",
            "fe80::/64",
            "ff02::/16",
            "::/0",
            "::/1",
        ] {
            assert!(
                check_tenant_cidr(&Cidr::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
        for good in [
            "10.0.2.0/24",
            "192.168.1.0/24",
            "100.64.0.0/10",
            "fd00::/64",
            "2001:db8::/64",
        ] {
            assert!(
                check_tenant_cidr(&Cidr::parse(good).unwrap()).is_ok(),
                "{good}"
            );
        }
        let (v, ver) = parse_ip("169.254.169.254").unwrap();
        assert!(check_tenant_gateway(v, ver).is_err());
        let (v, ver) = parse_ip("10.0.0.1").unwrap();
        assert!(check_tenant_gateway(v, ver).is_ok());
    }

    #[test]
    fn cidrs_parse_and_pools_default_around_the_gateway() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert_eq!(c.version, 4);
        assert_eq!(to_ip(c.last(), 4), "10.0.0.255");
        assert!(Cidr::parse("10.0.0.1/24").is_err(), "host bits set");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        let g = parse_ip("10.0.0.1").unwrap().0;
        let pools = default_pools(&c, Some(g));
        assert_eq!(
            pools,
            vec![Pool {
                start: "10.0.0.2".into(),
                end: "10.0.0.254".into()
            }]
        );
        let mid = parse_ip("10.0.0.100").unwrap().0;
        assert_eq!(default_pools(&c, Some(mid)).len(), 2);
        assert!(c.overlaps(&Cidr::parse("10.0.0.128/25").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.0.1.0/24").unwrap()));
        let v6 = Cidr::parse("fd00::/64").unwrap();
        assert_eq!(to_ip(v6.host_range().0, 6), "fd00::1");
    }

    #[test]
    fn allocation_skips_used_addresses_and_knows_when_full() {
        let c = Cidr::parse("192.168.0.0/29").unwrap();
        let pools = default_pools(&c, parse_ip("192.168.0.1").map(|x| x.0));
        assert_eq!(first_free(&c, &pools, &[]).unwrap(), "192.168.0.2");
        let used: Vec<String> = (2..=5).map(|i| format!("192.168.0.{i}")).collect();
        assert_eq!(first_free(&c, &pools, &used).unwrap(), "192.168.0.6");
        let all: Vec<String> = (2..=6).map(|i| format!("192.168.0.{i}")).collect();
        assert_eq!(first_free(&c, &pools, &all), None);
        assert!(check_pools(&c, &pools, Some(parse_ip("192.168.0.1").unwrap().0)).is_ok());
        let e = check_pools(&c, &pools, Some(parse_ip("192.168.0.3").unwrap().0)).unwrap_err();
        assert_eq!(e.kind.status(), 409);
        let outside = vec![Pool {
            start: "192.168.0.2".into(),
            end: "192.168.1.9".into(),
        }];
        assert!(check_pools(&c, &outside, None).is_err());
    }
}
