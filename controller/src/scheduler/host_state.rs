//! What the scheduler knows of a compute host ([`HostState`]) and what a
//! request asks for ([`RequestSpec`]).
//!
//! A host is a placement resource provider (named after the host) plus what
//! the compute API's tables say of its service, aggregates and hypervisor.
//! Usage has two parts: what the database had at the provider's last read
//! generation, and the claims this process has in flight on it (virtual
//! consumption), so that concurrent and multi-instance requests see each
//! other before their claims land.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::db::Timestamp;
use crate::db::placement::Inventory;

/// The resource classes of a request: `VCPU`, `MEMORY_MB`, `DISK_GB`, and
/// any `resources:<CLASS>=<n>` of the flavor's extra specs.
pub type Resources = BTreeMap<String, i64>;

/// A Nova host aggregate the host belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostAggregate {
    /// Its UUID (also its placement aggregate).
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// Its metadata (`availability_zone`, …).
    pub metadata: BTreeMap<String, String>,
}

/// The compute service of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    /// Disabled by an operator: no new builds.
    pub disabled: bool,
    /// Forced down by an operator: treated as down.
    pub forced_down: bool,
    /// The last heartbeat (or registration).
    pub last_seen: Option<Timestamp>,
}

impl ServiceInfo {
    /// Whether the service counts as up at `now` (Nova's servicegroup
    /// driver): not forced down, and heard from within `down_after_secs`.
    pub fn is_up(&self, now: Timestamp, down_after_secs: i64) -> bool {
        !self.forced_down
            && self
                .last_seen
                .is_some_and(|t| now.0.signed_duration_since(t.0).num_seconds() <= down_after_secs)
    }
}

/// What the host's hypervisor is, for capability and image filters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hypervisor {
    /// `mica` (or `mica-simulated`).
    pub hypervisor_type: String,
    /// An integer version (Nova's convention: 1002003 for 1.2.3).
    pub hypervisor_version: u64,
    /// CPU model name.
    pub cpu_model: String,
    /// Host address.
    pub host_ip: String,
}

/// One compute host as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostState {
    /// The host name (the service's `host`, the provider's name).
    pub host: String,
    /// Its resource provider.
    pub provider_uuid: String,
    /// The provider generation the usage was read at.
    pub generation: i64,
    /// Inventories by resource class.
    pub inventories: BTreeMap<String, Inventory>,
    /// Usage by class at `generation`.
    pub used: BTreeMap<String, i64>,
    /// Claims of this process in flight on the host, by class.
    pub pending: BTreeMap<String, i64>,
    /// Placement traits.
    pub traits: BTreeSet<String>,
    /// Placement aggregates (UUIDs).
    pub placement_aggregates: BTreeSet<String>,
    /// Nova aggregates with their metadata.
    pub aggregates: Vec<HostAggregate>,
    /// Its compute service, if one registered.
    pub service: Option<ServiceInfo>,
    /// Its hypervisor.
    pub hypervisor: Hypervisor,
    /// Instances on the host (plus this process's in-flight placements).
    pub num_instances: u32,
    /// Recent build failures (BuildFailureWeigher).
    pub failed_builds: u32,
}

impl HostState {
    /// A host with `inventories` and nothing else known (tests, benchmarks).
    pub fn new(host: &str, provider_uuid: &str, inventories: Vec<Inventory>) -> HostState {
        HostState {
            host: host.to_owned(),
            provider_uuid: provider_uuid.to_owned(),
            generation: 0,
            inventories: inventories
                .into_iter()
                .map(|i| (i.resource_class.clone(), i))
                .collect(),
            used: BTreeMap::new(),
            pending: BTreeMap::new(),
            traits: BTreeSet::new(),
            placement_aggregates: BTreeSet::new(),
            aggregates: Vec::new(),
            service: None,
            hypervisor: Hypervisor::default(),
            num_instances: 0,
            failed_builds: 0,
        }
    }

    /// Usage of `rc`, in-flight claims included.
    pub fn usage(&self, rc: &str) -> i64 {
        self.used.get(rc).copied().unwrap_or(0) + self.pending.get(rc).copied().unwrap_or(0)
    }

    /// What allocations of `rc` may add up to (inventory × ratio).
    pub fn capacity(&self, rc: &str) -> i64 {
        self.inventories.get(rc).map_or(0, Inventory::capacity)
    }

    /// Free capacity of `rc`.
    pub fn free(&self, rc: &str) -> i64 {
        self.capacity(rc) - self.usage(rc)
    }

    /// Whether the host alone can hold `resources` now (placement's rule:
    /// an inventory of every class whose unit rules accept the amount and
    /// whose free capacity holds it).
    pub fn fits(&self, resources: &Resources) -> bool {
        resources.iter().all(|(rc, amount)| {
            *amount == 0
                || self
                    .inventories
                    .get(rc)
                    .is_some_and(|inv| inv.accepts_amount(*amount) && self.free(rc) >= *amount)
        })
    }

    /// Virtually consumes `resources` (a selection whose claim is in flight).
    pub fn consume(&mut self, resources: &Resources) {
        for (rc, n) in resources {
            *self.pending.entry(rc.clone()).or_default() += n;
        }
        self.num_instances += 1;
    }

    /// Takes back a virtual consumption (its claim failed).
    pub fn release(&mut self, resources: &Resources) {
        for (rc, n) in resources {
            let p = self.pending.entry(rc.clone()).or_default();
            *p = (*p - n).max(0);
        }
        self.num_instances = self.num_instances.saturating_sub(1);
    }

    /// Turns a virtual consumption into a landed claim at `generation`. If the
    /// cache already read the provider at that generation or later (a refresh
    /// ran between the claim's commit and this call), that read's usage
    /// includes the claim: only the virtual consumption goes, or the claim
    /// would count twice and the host look fuller than it is until its next
    /// change (seen: 9 builds on 3 equal hosts spread 2/3/4 on a loaded
    /// machine).
    pub fn landed(&mut self, resources: &Resources, generation: i64) {
        let already_read = self.generation >= generation;
        for (rc, n) in resources {
            let p = self.pending.entry(rc.clone()).or_default();
            *p = (*p - n).max(0);
            if !already_read {
                *self.used.entry(rc.clone()).or_default() += n;
            }
        }
        self.generation = self.generation.max(generation);
    }

    /// Metadata of the host's aggregates: key → every value it has.
    pub fn aggregate_metadata(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for a in &self.aggregates {
            for (k, v) in &a.metadata {
                out.entry(k.clone()).or_default().insert(v.clone());
            }
        }
        out
    }

    /// The host's availability zones (from its aggregates' metadata), or
    /// `default_az` when none names one.
    pub fn availability_zones(&self, default_az: &str) -> BTreeSet<String> {
        let zones: BTreeSet<String> = self
            .aggregates
            .iter()
            .filter_map(|a| a.metadata.get("availability_zone").cloned())
            .collect();
        if zones.is_empty() {
            [default_az.to_owned()].into()
        } else {
            zones
        }
    }

    /// The CPU architecture from the host's `COMPUTE_ARCH_*` trait
    /// (`x86_64`, `aarch64`).
    pub fn architecture(&self) -> Option<String> {
        self.traits
            .iter()
            .find_map(|t| t.strip_prefix("COMPUTE_ARCH_"))
            .map(|a| a.to_ascii_lowercase())
    }
}

/// The server group of a request, and where its members are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// The group's UUID.
    pub uuid: String,
    /// `affinity`, `anti-affinity`, `soft-affinity`, `soft-anti-affinity`.
    pub policy: String,
    /// `max_server_per_host` (anti-affinity), 1 when absent.
    #[serde(default)]
    pub max_server_per_host: Option<u32>,
    /// The members (instance UUIDs), this request's included.
    #[serde(default)]
    pub members: Vec<String>,
    /// Members placed so far, by host (including this request's earlier
    /// instances).
    #[serde(default)]
    pub hosts: BTreeMap<String, u32>,
}

/// What is asked: Nova's `RequestSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// The project of the instances.
    pub project_id: String,
    /// The user.
    pub user_id: String,
    /// Resources per instance.
    pub resources: Resources,
    /// The flavor's extra specs.
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
    /// The image's properties (strings).
    #[serde(default)]
    pub image_properties: BTreeMap<String, String>,
    /// Requested availability zone (the zone part of `zone:host`).
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Forced host (admin `zone:host` or the `force_host` hint): filters
    /// are skipped, placement still checks capacity.
    #[serde(default)]
    pub force_host: Option<String>,
    /// The server group, if any.
    #[serde(default)]
    pub group: Option<GroupSpec>,
    /// Hosts not to use (already tried: the Retry filter).
    #[serde(default)]
    pub ignore_hosts: BTreeSet<String>,
    /// Placement traits every host must have.
    #[serde(default)]
    pub required_traits: BTreeSet<String>,
    /// Placement traits no host may have.
    #[serde(default)]
    pub forbidden_traits: BTreeSet<String>,
    /// Each inner list: the host must be in one of these placement aggregates.
    #[serde(default)]
    pub member_of: Vec<Vec<String>>,
}

/// The flavor fields a request is made from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlavorResources {
    /// vCPUs.
    pub vcpus: i64,
    /// RAM in MiB.
    pub memory_mb: i64,
    /// Root disk in GiB.
    pub root_gb: i64,
    /// Ephemeral disk in GiB.
    pub ephemeral_gb: i64,
    /// Swap in MiB.
    pub swap_mb: i64,
}

impl RequestSpec {
    /// The resources, required and forbidden traits of a flavor, as Nova
    /// computes them: `VCPU`, `MEMORY_MB`, `DISK_GB` (root + ephemeral +
    /// swap rounded up to GiB), overridden or extended by `resources:<RC>=N`
    /// extra specs (0 drops a class), and `trait:<NAME>=required|forbidden`
    /// from the flavor and the image.
    pub fn resources_from_flavor(
        &mut self,
        flavor: &FlavorResources,
        extra_specs: &BTreeMap<String, String>,
    ) {
        let mut r = Resources::new();
        r.insert("VCPU".into(), flavor.vcpus);
        r.insert("MEMORY_MB".into(), flavor.memory_mb);
        let swap_gb = (flavor.swap_mb + 1023) / 1024;
        r.insert(
            "DISK_GB".into(),
            flavor.root_gb + flavor.ephemeral_gb + swap_gb,
        );
        for (k, v) in extra_specs {
            if let Some(rc) = k.strip_prefix("resources:")
                && let Ok(n) = v.trim().parse::<i64>()
            {
                r.insert(rc.to_owned(), n);
            } else if let Some(t) = k.strip_prefix("trait:") {
                match v.trim() {
                    "required" => {
                        self.required_traits.insert(t.to_owned());
                    }
                    "forbidden" => {
                        self.forbidden_traits.insert(t.to_owned());
                    }
                    _ => {}
                }
            }
        }
        for (k, v) in &self.image_properties {
            if let Some(t) = k.strip_prefix("trait:")
                && v.trim() == "required"
            {
                self.required_traits.insert(t.to_owned());
            }
        }
        r.retain(|_, n| *n > 0);
        self.resources = r;
        self.extra_specs = extra_specs.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn inv(rc: &str, total: i64, ratio: f64) -> Inventory {
        Inventory {
            resource_class: rc.into(),
            total,
            reserved: 0,
            min_unit: 1,
            max_unit: total,
            step_size: 1,
            allocation_ratio: ratio,
        }
    }

    #[test]
    fn fits_counts_pending_claims_and_unit_rules() {
        let mut h = HostState::new(
            "h",
            "p",
            vec![inv("VCPU", 4, 2.0), inv("MEMORY_MB", 1024, 1.0)],
        );
        let req: Resources = [("VCPU".into(), 2), ("MEMORY_MB".into(), 512)].into();
        assert!(h.fits(&req));
        h.consume(&req);
        assert!(h.fits(&req));
        h.consume(&req);
        assert!(!h.fits(&req), "memory is full with two in flight");
        h.release(&req);
        h.landed(&req, 7);
        assert_eq!(h.usage("MEMORY_MB"), 512, "one given back, one landed");
        assert_eq!(h.pending.get("MEMORY_MB"), Some(&0));
        assert_eq!(h.generation, 7);
        assert!(h.fits(&req));
        let big: Resources = [("VCPU".into(), 5)].into();
        let h2 = HostState::new("h2", "p2", vec![inv("VCPU", 4, 16.0)]);
        assert!(!h2.fits(&big), "max_unit 4 refuses 5 whatever the ratio");
        let other: Resources = [("VGPU".into(), 1)].into();
        assert!(!h2.fits(&other), "no inventory of the class");
    }

    #[test]
    fn a_claim_read_back_before_it_lands_counts_once() {
        let mut h = HostState::new("h", "p", vec![inv("MEMORY_MB", 4096, 1.0)]);
        h.generation = 3;
        let req: Resources = [("MEMORY_MB".into(), 1024)].into();
        h.consume(&req);
        // The claim commits at generation 4; a refresh reads the provider
        // (its usage now includes the claim) before the claim is marked landed.
        h.generation = 4;
        h.used.insert("MEMORY_MB".into(), 1024);
        h.landed(&req, 4);
        assert_eq!(h.usage("MEMORY_MB"), 1024, "counted once");
        // The usual order: landed first, the cache had not seen it.
        h.consume(&req);
        h.landed(&req, 5);
        assert_eq!(h.usage("MEMORY_MB"), 2048);
        assert_eq!(h.generation, 5);
    }

    #[test]
    fn flavor_resources_and_traits() {
        let mut spec = RequestSpec::default();
        spec.image_properties
            .insert("trait:HW_CPU_X86_AVX2".into(), "required".into());
        let extra: BTreeMap<String, String> = [
            ("resources:CUSTOM_GPU".to_string(), "1".to_string()),
            ("resources:DISK_GB".to_string(), "0".to_string()),
            (
                "trait:COMPUTE_STATUS_DISABLED".to_string(),
                "forbidden".to_string(),
            ),
            ("trait:CUSTOM_FAST".to_string(), "required".to_string()),
        ]
        .into();
        spec.resources_from_flavor(
            &FlavorResources {
                vcpus: 2,
                memory_mb: 2048,
                root_gb: 20,
                ephemeral_gb: 0,
                swap_mb: 512,
            },
            &extra,
        );
        assert_eq!(
            spec.resources,
            [
                ("CUSTOM_GPU".to_string(), 1),
                ("MEMORY_MB".to_string(), 2048),
                ("VCPU".to_string(), 2),
            ]
            .into()
        );
        assert!(spec.required_traits.contains("CUSTOM_FAST"));
        assert!(spec.required_traits.contains("HW_CPU_X86_AVX2"));
        assert!(spec.forbidden_traits.contains("COMPUTE_STATUS_DISABLED"));

        let mut spec = RequestSpec::default();
        spec.resources_from_flavor(
            &FlavorResources {
                vcpus: 1,
                memory_mb: 128,
                root_gb: 1,
                ephemeral_gb: 2,
                swap_mb: 1,
            },
            &BTreeMap::new(),
        );
        assert_eq!(spec.resources["DISK_GB"], 4, "swap rounds up to a GiB");
    }

    #[test]
    fn services_go_down_after_silence_or_when_forced() {
        let now = Timestamp::now();
        let s = ServiceInfo {
            disabled: false,
            forced_down: false,
            last_seen: Some(now.plus_secs(-30)),
        };
        assert!(s.is_up(now, 60));
        assert!(!s.is_up(now, 10));
        assert!(
            !ServiceInfo {
                forced_down: true,
                ..s.clone()
            }
            .is_up(now, 60)
        );
        assert!(
            !ServiceInfo {
                last_seen: None,
                ..s
            }
            .is_up(now, 60)
        );
    }
}
