//! Host filters, as Nova's filter scheduler has them. Which ones run, in
//! which order, is `[filter_scheduler] enabled_filters`.
//!
//! | filter | passes a host when |
//! |---|---|
//! | `AvailabilityZoneFilter` | no zone is asked, or the host's aggregates put it in that zone (`default_availability_zone` when none does) |
//! | `ComputeFilter` | its compute service is enabled and up (heard from within `service_down_time`, not forced down) |
//! | `ComputeCapabilitiesFilter` | every unscoped or `capabilities:`-scoped flavor extra spec matches the host's capability of that name |
//! | `ImagePropertiesFilter` | the image's `hw_architecture`, `img_hv_type`, `hw_vm_mode` (and `img_hv_requested_version`) are among what the host supports |
//! | `ServerGroupAffinityFilter` | the group (policy `affinity`) has no member placed yet, or has members on this host |
//! | `ServerGroupAntiAffinityFilter` | the group (policy `anti-affinity`) has fewer than `max_server_per_host` (1) members on this host |
//! | `AggregateInstanceExtraSpecsFilter` | every unscoped or `aggregate_instance_extra_specs:`-scoped extra spec matches a value of that key in the host's aggregates' metadata |
//! | `RetryFilter` | the host was not tried already for this instance |
//!
//! Extra-spec values use Nova's operators ([`matches`]): `=` (numeric at
//! least), `==`, `!=`, `>=`, `<=`, `s==`, `s!=`, `s<`, `s<=`, `s>`, `s>=`,
//! `<in>`, `<all-in>`, `<or>`; a value without an operator must be equal.

use std::collections::BTreeMap;

use super::host_state::{HostState, RequestSpec};
use crate::db::Timestamp;

/// What filters need besides the host and the request.
#[derive(Debug, Clone)]
pub struct FilterEnv {
    /// Now.
    pub now: Timestamp,
    /// Seconds without a heartbeat after which a service is down.
    pub service_down_time: i64,
    /// The zone of hosts whose aggregates name none.
    pub default_availability_zone: String,
}

/// A host filter.
pub trait Filter: Send + Sync {
    /// Its name in `enabled_filters`.
    fn name(&self) -> &'static str;
    /// Whether `host` may take an instance of `spec`.
    fn passes(&self, host: &HostState, spec: &RequestSpec, env: &FilterEnv) -> bool;
}

/// Every filter, by name.
pub const ALL_FILTERS: [&str; 8] = [
    "AvailabilityZoneFilter",
    "ComputeFilter",
    "ComputeCapabilitiesFilter",
    "ImagePropertiesFilter",
    "ServerGroupAffinityFilter",
    "ServerGroupAntiAffinityFilter",
    "AggregateInstanceExtraSpecsFilter",
    "RetryFilter",
];

/// The filter called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Filter>> {
    Some(match name {
        "AvailabilityZoneFilter" => Box::new(AvailabilityZoneFilter),
        "ComputeFilter" => Box::new(ComputeFilter),
        "ComputeCapabilitiesFilter" => Box::new(ComputeCapabilitiesFilter),
        "ImagePropertiesFilter" => Box::new(ImagePropertiesFilter),
        "ServerGroupAffinityFilter" => Box::new(ServerGroupAffinityFilter),
        "ServerGroupAntiAffinityFilter" => Box::new(ServerGroupAntiAffinityFilter),
        "AggregateInstanceExtraSpecsFilter" => Box::new(AggregateInstanceExtraSpecsFilter),
        "RetryFilter" => Box::new(RetryFilter),
        _ => return None,
    })
}

// ---- extra-spec operators -----------------------------------------------------

fn num(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok()
}

/// Nova's `extra_specs_ops.match`: whether the capability `value` satisfies
/// the requirement `req`.
pub fn matches(value: Option<&str>, req: &str) -> bool {
    let mut words = req.split_whitespace();
    let Some(op) = words.next() else {
        return value == Some(req);
    };
    let rest: Vec<&str> = words.collect();
    let known = matches!(
        op,
        "=" | "=="
            | "!="
            | ">="
            | "<="
            | "s=="
            | "s!="
            | "s<"
            | "s<="
            | "s>"
            | "s>="
            | "<in>"
            | "<all-in>"
            | "<or>"
    );
    if !known {
        return value == Some(req);
    }
    let Some(value) = value else {
        return false;
    };
    if op == "<or>" {
        // `<or> a <or> b <or> c`: the words at even positions are choices.
        return rest.iter().step_by(2).any(|w| *w == value);
    }
    let Some(first) = rest.first().copied() else {
        return false;
    };
    let numeric = |f: fn(f64, f64) -> bool| match (num(value), num(first)) {
        (Some(a), Some(b)) => f(a, b),
        _ => false,
    };
    match op {
        "=" | ">=" => numeric(|a, b| a >= b),
        "==" => numeric(|a, b| a == b),
        "!=" => numeric(|a, b| a != b),
        "<=" => numeric(|a, b| a <= b),
        "s==" => value == first,
        "s!=" => value != first,
        "s<" => value < first,
        "s<=" => value <= first,
        "s>" => value > first,
        "s>=" => value >= first,
        "<in>" => value.contains(first),
        "<all-in>" => rest.iter().all(|w| value.contains(w)),
        _ => false,
    }
}

/// The key of an extra spec for a filter that reads unscoped keys and keys
/// of `scope`: `Some(key)` to check, `None` to skip (another scope).
fn scoped<'a>(key: &'a str, scope: &str) -> Option<&'a str> {
    match key.split_once(':') {
        None => Some(key),
        Some((s, rest)) if s == scope => Some(rest),
        Some(_) => None,
    }
}

// ---- the filters ------------------------------------------------------------------

/// See the module table.
pub struct AvailabilityZoneFilter;

impl Filter for AvailabilityZoneFilter {
    fn name(&self) -> &'static str {
        "AvailabilityZoneFilter"
    }
    fn passes(&self, host: &HostState, spec: &RequestSpec, env: &FilterEnv) -> bool {
        match spec.availability_zone.as_deref() {
            None | Some("") => true,
            Some(az) => host
                .availability_zones(&env.default_availability_zone)
                .contains(az),
        }
    }
}

/// See the module table.
pub struct ComputeFilter;

impl Filter for ComputeFilter {
    fn name(&self) -> &'static str {
        "ComputeFilter"
    }
    fn passes(&self, host: &HostState, _spec: &RequestSpec, env: &FilterEnv) -> bool {
        host.service
            .as_ref()
            .is_some_and(|s| !s.disabled && s.is_up(env.now, env.service_down_time))
    }
}

/// The host's capabilities by (possibly nested) name, as
/// `ComputeCapabilitiesFilter` looks them up: `hypervisor_type`,
/// `hypervisor_version`, `cpu_info:arch`, `free_ram_mb`, …
pub fn capabilities(host: &HostState) -> BTreeMap<String, String> {
    let mut c = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        c.insert(k.to_owned(), v);
    };
    put("host", host.host.clone());
    put("nodename", host.host.clone());
    put("hypervisor_hostname", host.host.clone());
    put("hypervisor_type", host.hypervisor.hypervisor_type.clone());
    put(
        "hypervisor_version",
        host.hypervisor.hypervisor_version.to_string(),
    );
    put("host_ip", host.hypervisor.host_ip.clone());
    put("cpu_info:model", host.hypervisor.cpu_model.clone());
    if let Some(arch) = host.architecture() {
        put("cpu_info:arch", arch);
    }
    let features: Vec<String> = host
        .traits
        .iter()
        .filter_map(|t| t.strip_prefix("HW_CPU_X86_"))
        .map(|f| f.to_ascii_lowercase())
        .collect();
    put("cpu_info:features", features.join(","));
    put("free_ram_mb", host.free("MEMORY_MB").to_string());
    put("free_disk_mb", (host.free("DISK_GB") * 1024).to_string());
    put(
        "total_usable_ram_mb",
        host.inventories
            .get("MEMORY_MB")
            .map_or(0, |i| i.total - i.reserved)
            .to_string(),
    );
    put(
        "total_usable_disk_gb",
        host.inventories
            .get("DISK_GB")
            .map_or(0, |i| i.total - i.reserved)
            .to_string(),
    );
    put(
        "vcpus_total",
        host.inventories
            .get("VCPU")
            .map_or(0, |i| i.total)
            .to_string(),
    );
    put("vcpus_used", host.usage("VCPU").to_string());
    put("num_instances", host.num_instances.to_string());
    c
}

/// See the module table.
pub struct ComputeCapabilitiesFilter;

impl Filter for ComputeCapabilitiesFilter {
    fn name(&self) -> &'static str {
        "ComputeCapabilitiesFilter"
    }
    fn passes(&self, host: &HostState, spec: &RequestSpec, _env: &FilterEnv) -> bool {
        let mut caps: Option<BTreeMap<String, String>> = None;
        for (key, req) in &spec.extra_specs {
            let Some(name) = scoped(key, "capabilities") else {
                continue;
            };
            let caps = caps.get_or_insert_with(|| capabilities(host));
            if !matches(caps.get(name).map(String::as_str), req) {
                return false;
            }
        }
        true
    }
}

/// Canonical architecture names (Nova's `arch.canonicalize`).
fn canonical_arch(a: &str) -> String {
    let a = a.trim().to_ascii_lowercase();
    match a.as_str() {
        "amd64" | "x64" => "x86_64".into(),
        "i386" | "i486" | "i586" | "i686" | "x86_32" => "i686".into(),
        "arm64" => "aarch64".into(),
        _ => a,
    }
}

/// Nova's version predicate: `>= 2.0`, `== 1.2.3`, `< 3`, or a bare
/// version meaning equality.
fn version_satisfies(version: u64, predicate: &str) -> bool {
    let parse = |s: &str| -> Option<u64> {
        let mut parts = s.trim().split('.').map(|p| p.trim().parse::<u64>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(major * 1_000_000 + minor * 1_000 + patch)
    };
    let p = predicate.trim();
    let (op, rest) = ["<=", ">=", "==", "!=", "<", ">"]
        .iter()
        .find_map(|op| p.strip_prefix(op).map(|r| (*op, r)))
        .unwrap_or(("==", p));
    let Some(want) = parse(rest) else {
        return false;
    };
    match op {
        "<=" => version <= want,
        ">=" => version >= want,
        "==" => version == want,
        "!=" => version != want,
        "<" => version < want,
        ">" => version > want,
        _ => false,
    }
}

/// See the module table. A Mica host supports `(its architecture,
/// its hypervisor type, hvm)`.
pub struct ImagePropertiesFilter;

impl Filter for ImagePropertiesFilter {
    fn name(&self) -> &'static str {
        "ImagePropertiesFilter"
    }
    fn passes(&self, host: &HostState, spec: &RequestSpec, _env: &FilterEnv) -> bool {
        let prop = |new: &str, old: &str| {
            spec.image_properties
                .get(new)
                .or_else(|| spec.image_properties.get(old))
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let arch = prop("hw_architecture", "architecture").map(|a| canonical_arch(&a));
        let hv_type = prop("img_hv_type", "hypervisor_type").map(|h| h.to_ascii_lowercase());
        let vm_mode = prop("hw_vm_mode", "vm_mode").map(|m| m.to_ascii_lowercase());
        if arch.is_none() && hv_type.is_none() && vm_mode.is_none() {
            return true;
        }
        let (Some(host_arch), false) = (
            host.architecture(),
            host.hypervisor.hypervisor_type.is_empty(),
        ) else {
            // Nothing advertised: not supported.
            return false;
        };
        let host_hv = host.hypervisor.hypervisor_type.to_ascii_lowercase();
        let supported = arch.as_ref().is_none_or(|a| *a == host_arch)
            && hv_type.as_ref().is_none_or(|h| *h == host_hv)
            && vm_mode.as_deref().is_none_or(|m| m == "hvm");
        if !supported {
            return false;
        }
        match prop("img_hv_requested_version", "hypervisor_version_requires") {
            Some(pred) if host.hypervisor.hypervisor_version > 0 => {
                version_satisfies(host.hypervisor.hypervisor_version, &pred)
            }
            _ => true,
        }
    }
}

/// See the module table.
pub struct ServerGroupAffinityFilter;

impl Filter for ServerGroupAffinityFilter {
    fn name(&self) -> &'static str {
        "ServerGroupAffinityFilter"
    }
    fn passes(&self, host: &HostState, spec: &RequestSpec, _env: &FilterEnv) -> bool {
        match &spec.group {
            Some(g) if g.policy == "affinity" => {
                let placed: Vec<&String> = g
                    .hosts
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(h, _)| h)
                    .collect();
                placed.is_empty() || placed.contains(&&host.host)
            }
            _ => true,
        }
    }
}

/// See the module table.
pub struct ServerGroupAntiAffinityFilter;

impl Filter for ServerGroupAntiAffinityFilter {
    fn name(&self) -> &'static str {
        "ServerGroupAntiAffinityFilter"
    }
    fn passes(&self, host: &HostState, spec: &RequestSpec, _env: &FilterEnv) -> bool {
        match &spec.group {
            Some(g) if g.policy == "anti-affinity" => {
                let max = g.max_server_per_host.unwrap_or(1).max(1);
                g.hosts.get(&host.host).copied().unwrap_or(0) < max
            }
            _ => true,
        }
    }
}

/// See the module table.
pub struct AggregateInstanceExtraSpecsFilter;

impl Filter for AggregateInstanceExtraSpecsFilter {
    fn name(&self) -> &'static str {
        "AggregateInstanceExtraSpecsFilter"
    }
    fn passes(&self, host: &HostState, spec: &RequestSpec, _env: &FilterEnv) -> bool {
        if spec.extra_specs.is_empty() {
            return true;
        }
        let metadata = host.aggregate_metadata();
        for (key, req) in &spec.extra_specs {
            let Some(key) = scoped(key, "aggregate_instance_extra_specs") else {
                continue;
            };
            let Some(values) = metadata.get(key).filter(|v| !v.is_empty()) else {
                return false;
            };
            if !values.iter().any(|v| matches(Some(v), req)) {
                return false;
            }
        }
        true
    }
}

/// See the module table.
pub struct RetryFilter;

impl Filter for RetryFilter {
    fn name(&self) -> &'static str {
        "RetryFilter"
    }
    fn passes(&self, host: &HostState, spec: &RequestSpec, _env: &FilterEnv) -> bool {
        !spec.ignore_hosts.contains(&host.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::placement::Inventory;
    use crate::scheduler::host_state::{GroupSpec, HostAggregate, Hypervisor, ServiceInfo};

    fn env() -> FilterEnv {
        FilterEnv {
            now: Timestamp::now(),
            service_down_time: 60,
            default_availability_zone: "nova".into(),
        }
    }

    fn host(name: &str) -> HostState {
        let mut h = HostState::new(
            name,
            &format!("rp-{name}"),
            vec![
                Inventory {
                    resource_class: "VCPU".into(),
                    total: 8,
                    reserved: 0,
                    min_unit: 1,
                    max_unit: 8,
                    step_size: 1,
                    allocation_ratio: 4.0,
                },
                Inventory {
                    resource_class: "MEMORY_MB".into(),
                    total: 16384,
                    reserved: 512,
                    min_unit: 1,
                    max_unit: 16384,
                    step_size: 1,
                    allocation_ratio: 1.0,
                },
            ],
        );
        h.service = Some(ServiceInfo {
            disabled: false,
            forced_down: false,
            last_seen: Some(Timestamp::now()),
        });
        h.hypervisor = Hypervisor {
            hypervisor_type: "mica".into(),
            hypervisor_version: 1_002_000,
            cpu_model: "EPYC".into(),
            host_ip: "10.0.0.1".into(),
        };
        h.traits.insert("COMPUTE_ARCH_X86_64".into());
        h.traits.insert("HW_CPU_X86_AVX2".into());
        h
    }

    fn specs(pairs: &[(&str, &str)]) -> RequestSpec {
        RequestSpec {
            extra_specs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..RequestSpec::default()
        }
    }

    #[test]
    fn operators_are_novas() {
        assert!(matches(Some("4"), "= 2"));
        assert!(!matches(Some("1"), "= 2"));
        assert!(matches(Some("2"), "== 2.0"));
        assert!(matches(Some("3"), "!= 2"));
        assert!(matches(Some("2"), "<= 2"));
        assert!(!matches(Some("x"), ">= 2"), "not a number: no match");
        assert!(matches(Some("abc"), "s== abc"));
        assert!(matches(Some("abc"), "s!= abd"));
        assert!(matches(Some("abc"), "s< abd"));
        assert!(matches(Some("abd"), "s>= abc"));
        assert!(matches(Some("a,avx2,b"), "<in> avx2"));
        assert!(matches(Some("sse avx2"), "<all-in> sse avx2"));
        assert!(!matches(Some("sse"), "<all-in> sse avx2"));
        assert!(matches(Some("kvm"), "<or> xen <or> kvm"));
        assert!(!matches(Some("qemu"), "<or> xen <or> kvm"));
        assert!(matches(Some("plain"), "plain"));
        assert!(!matches(Some("plain"), "other"));
        assert!(!matches(None, "= 1"));
        assert!(!matches(None, "x"));
    }

    #[test]
    fn availability_zone() {
        let f = AvailabilityZoneFilter;
        let mut h = host("a");
        let mut spec = RequestSpec::default();
        assert!(f.passes(&h, &spec, &env()), "no zone asked");
        spec.availability_zone = Some("nova".into());
        assert!(f.passes(&h, &spec, &env()), "default zone");
        spec.availability_zone = Some("az1".into());
        assert!(!f.passes(&h, &spec, &env()));
        h.aggregates.push(HostAggregate {
            uuid: "agg".into(),
            name: "agg".into(),
            metadata: [("availability_zone".to_string(), "az1".to_string())].into(),
        });
        assert!(f.passes(&h, &spec, &env()));
        spec.availability_zone = Some("nova".into());
        assert!(
            !f.passes(&h, &spec, &env()),
            "no longer in the default zone"
        );
    }

    #[test]
    fn compute_enabled_and_up() {
        let f = ComputeFilter;
        let spec = RequestSpec::default();
        let mut h = host("a");
        assert!(f.passes(&h, &spec, &env()));
        h.service.as_mut().unwrap().disabled = true;
        assert!(!f.passes(&h, &spec, &env()));
        h.service.as_mut().unwrap().disabled = false;
        h.service.as_mut().unwrap().last_seen = Some(Timestamp::now().plus_secs(-61));
        assert!(
            !f.passes(&h, &spec, &env()),
            "silent past service_down_time"
        );
        h.service.as_mut().unwrap().last_seen = Some(Timestamp::now().plus_secs(-59));
        assert!(f.passes(&h, &spec, &env()));
        h.service.as_mut().unwrap().forced_down = true;
        assert!(!f.passes(&h, &spec, &env()));
        h.service = None;
        assert!(!f.passes(&h, &spec, &env()), "no service registered");
    }

    #[test]
    fn compute_capabilities() {
        let f = ComputeCapabilitiesFilter;
        let h = host("a");
        assert!(f.passes(&h, &specs(&[]), &env()));
        assert!(f.passes(&h, &specs(&[("hypervisor_type", "mica")]), &env()));
        assert!(!f.passes(&h, &specs(&[("hypervisor_type", "QEMU")]), &env()));
        assert!(f.passes(
            &h,
            &specs(&[("capabilities:cpu_info:arch", "x86_64")]),
            &env()
        ));
        assert!(f.passes(
            &h,
            &specs(&[("capabilities:cpu_info:features", "<in> avx2")]),
            &env()
        ));
        assert!(f.passes(
            &h,
            &specs(&[("capabilities:hypervisor_version", ">= 1002000")]),
            &env()
        ));
        assert!(!f.passes(&h, &specs(&[("capabilities:vcpus_total", ">= 16")]), &env()));
        assert!(f.passes(
            &h,
            &specs(&[("capabilities:free_ram_mb", ">= 15000")]),
            &env()
        ));
        assert!(!f.passes(&h, &specs(&[("capabilities:no_such", "1")]), &env()));
        assert!(
            f.passes(
                &h,
                &specs(&[("hw:cpu_policy", "dedicated"), ("quota:disk", "1")]),
                &env()
            ),
            "other scopes are not this filter's"
        );
    }

    #[test]
    fn image_properties() {
        let f = ImagePropertiesFilter;
        let h = host("a");
        let img = |pairs: &[(&str, &str)]| RequestSpec {
            image_properties: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..RequestSpec::default()
        };
        assert!(f.passes(&h, &img(&[]), &env()));
        assert!(f.passes(&h, &img(&[("hw_architecture", "x86_64")]), &env()));
        assert!(
            f.passes(&h, &img(&[("architecture", "amd64")]), &env()),
            "legacy name, canonicalized"
        );
        assert!(!f.passes(&h, &img(&[("hw_architecture", "aarch64")]), &env()));
        assert!(f.passes(
            &h,
            &img(&[("img_hv_type", "mica"), ("hw_vm_mode", "hvm")]),
            &env()
        ));
        assert!(!f.passes(&h, &img(&[("img_hv_type", "xen")]), &env()));
        assert!(!f.passes(&h, &img(&[("hw_vm_mode", "xen")]), &env()));
        assert!(f.passes(
            &h,
            &img(&[
                ("img_hv_type", "mica"),
                ("img_hv_requested_version", ">= 1.1")
            ]),
            &env()
        ));
        assert!(!f.passes(
            &h,
            &img(&[
                ("img_hv_type", "mica"),
                ("img_hv_requested_version", ">= 2.0")
            ]),
            &env()
        ));
        let mut bare = host("b");
        bare.traits.clear();
        assert!(
            !f.passes(&bare, &img(&[("hw_architecture", "x86_64")]), &env()),
            "nothing advertised"
        );
        assert!(f.passes(&bare, &img(&[]), &env()));
    }

    fn group(policy: &str, hosts: &[(&str, u32)], max: Option<u32>) -> RequestSpec {
        RequestSpec {
            group: Some(GroupSpec {
                uuid: "g".into(),
                policy: policy.into(),
                max_server_per_host: max,
                members: vec![],
                hosts: hosts.iter().map(|(h, n)| (h.to_string(), *n)).collect(),
            }),
            ..RequestSpec::default()
        }
    }

    #[test]
    fn server_group_affinity() {
        let f = ServerGroupAffinityFilter;
        let (a, b) = (host("a"), host("b"));
        assert!(f.passes(&a, &RequestSpec::default(), &env()));
        assert!(
            f.passes(&a, &group("affinity", &[], None), &env()),
            "first member goes anywhere"
        );
        assert!(f.passes(&a, &group("affinity", &[("a", 1)], None), &env()));
        assert!(!f.passes(&b, &group("affinity", &[("a", 1)], None), &env()));
        assert!(
            f.passes(&b, &group("anti-affinity", &[("a", 1)], None), &env()),
            "not its policy"
        );
    }

    #[test]
    fn server_group_anti_affinity() {
        let f = ServerGroupAntiAffinityFilter;
        let (a, b) = (host("a"), host("b"));
        assert!(f.passes(&a, &group("anti-affinity", &[], None), &env()));
        assert!(!f.passes(&a, &group("anti-affinity", &[("a", 1)], None), &env()));
        assert!(f.passes(&b, &group("anti-affinity", &[("a", 1)], None), &env()));
        assert!(
            f.passes(&a, &group("anti-affinity", &[("a", 1)], Some(2)), &env()),
            "max_server_per_host 2"
        );
        assert!(!f.passes(&a, &group("anti-affinity", &[("a", 2)], Some(2)), &env()));
        assert!(
            f.passes(&a, &group("affinity", &[("a", 3)], None), &env()),
            "not its policy"
        );
    }

    #[test]
    fn aggregate_instance_extra_specs() {
        let f = AggregateInstanceExtraSpecsFilter;
        let mut h = host("a");
        assert!(f.passes(&h, &specs(&[]), &env()));
        let ssd = specs(&[("aggregate_instance_extra_specs:ssd", "true")]);
        assert!(!f.passes(&h, &ssd, &env()), "no aggregate says ssd");
        h.aggregates.push(HostAggregate {
            uuid: "1".into(),
            name: "fast".into(),
            metadata: [("ssd".to_string(), "true".to_string())].into(),
        });
        h.aggregates.push(HostAggregate {
            uuid: "2".into(),
            name: "big".into(),
            metadata: [
                ("ssd".to_string(), "false".to_string()),
                ("cores".to_string(), "64".to_string()),
            ]
            .into(),
        });
        assert!(f.passes(&h, &ssd, &env()), "one of the values matches");
        assert!(
            f.passes(&h, &specs(&[("cores", ">= 32")]), &env()),
            "unscoped keys count"
        );
        assert!(!f.passes(&h, &specs(&[("cores", ">= 128")]), &env()));
        assert!(
            f.passes(&h, &specs(&[("capabilities:hypervisor_type", "x")]), &env()),
            "other scope"
        );
    }

    #[test]
    fn retry() {
        let f = RetryFilter;
        let spec = RequestSpec {
            ignore_hosts: ["a".to_string()].into(),
            ..RequestSpec::default()
        };
        assert!(!f.passes(&host("a"), &spec, &env()));
        assert!(f.passes(&host("b"), &spec, &env()));
    }

    #[test]
    fn every_filter_is_known_by_its_name() {
        for n in ALL_FILTERS {
            assert_eq!(by_name(n).unwrap().name(), n);
        }
        assert!(by_name("RamFilter").is_none());
    }
}
