//! Host weighers, as Nova's: each gives every host a raw value, the values
//! are normalised to 0…1 across the hosts (all equal → all 0), multiplied by
//! the weigher's multiplier and summed; the highest total wins, ties are
//! broken at random. Multipliers come from `[filter_scheduler]`.
//!
//! | weigher | raw value | multiplier | default |
//! |---|---|---|---|
//! | `RAMWeigher` | free `MEMORY_MB` (capacity with ratio, minus use) | `ram_weight_multiplier` | 1.0 (spread) |
//! | `CPUWeigher` | free `VCPU` | `cpu_weight_multiplier` | 1.0 (spread) |
//! | `DiskWeigher` | free `DISK_GB` | `disk_weight_multiplier` | 1.0 (spread) |
//! | `NumInstancesWeigher` | instances on the host | `num_instances_weight_multiplier` | 0.0 (positive packs) |
//! | `BuildFailureWeigher` | recent build failures | −`build_failure_weight_multiplier` | −1,000,000 |

use crate::config::FilterScheduler;

use super::host_state::HostState;

/// A weigher.
pub trait Weigher: Send + Sync {
    /// Its name in `[filter_scheduler] weighers`.
    fn name(&self) -> &'static str;
    /// Its multiplier under `cfg`.
    fn multiplier(&self, cfg: &FilterScheduler) -> f64;
    /// The host's raw value.
    fn raw(&self, host: &HostState) -> f64;
}

/// Every weigher, by name.
pub const ALL_WEIGHERS: [&str; 5] = [
    "RAMWeigher",
    "CPUWeigher",
    "DiskWeigher",
    "NumInstancesWeigher",
    "BuildFailureWeigher",
];

/// The weigher called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Weigher>> {
    Some(match name {
        "RAMWeigher" => Box::new(RamWeigher),
        "CPUWeigher" => Box::new(CpuWeigher),
        "DiskWeigher" => Box::new(DiskWeigher),
        "NumInstancesWeigher" => Box::new(NumInstancesWeigher),
        "BuildFailureWeigher" => Box::new(BuildFailureWeigher),
        _ => return None,
    })
}

/// See the module table.
pub struct RamWeigher;
impl Weigher for RamWeigher {
    fn name(&self) -> &'static str {
        "RAMWeigher"
    }
    fn multiplier(&self, cfg: &FilterScheduler) -> f64 {
        cfg.ram_weight_multiplier
    }
    fn raw(&self, host: &HostState) -> f64 {
        host.free("MEMORY_MB") as f64
    }
}

/// See the module table.
pub struct CpuWeigher;
impl Weigher for CpuWeigher {
    fn name(&self) -> &'static str {
        "CPUWeigher"
    }
    fn multiplier(&self, cfg: &FilterScheduler) -> f64 {
        cfg.cpu_weight_multiplier
    }
    fn raw(&self, host: &HostState) -> f64 {
        host.free("VCPU") as f64
    }
}

/// See the module table.
pub struct DiskWeigher;
impl Weigher for DiskWeigher {
    fn name(&self) -> &'static str {
        "DiskWeigher"
    }
    fn multiplier(&self, cfg: &FilterScheduler) -> f64 {
        cfg.disk_weight_multiplier
    }
    fn raw(&self, host: &HostState) -> f64 {
        host.free("DISK_GB") as f64
    }
}

/// See the module table.
pub struct NumInstancesWeigher;
impl Weigher for NumInstancesWeigher {
    fn name(&self) -> &'static str {
        "NumInstancesWeigher"
    }
    fn multiplier(&self, cfg: &FilterScheduler) -> f64 {
        cfg.num_instances_weight_multiplier
    }
    fn raw(&self, host: &HostState) -> f64 {
        f64::from(host.num_instances)
    }
}

/// See the module table.
pub struct BuildFailureWeigher;
impl Weigher for BuildFailureWeigher {
    fn name(&self) -> &'static str {
        "BuildFailureWeigher"
    }
    fn multiplier(&self, cfg: &FilterScheduler) -> f64 {
        -cfg.build_failure_weight_multiplier
    }
    fn raw(&self, host: &HostState) -> f64 {
        f64::from(host.failed_builds)
    }
}

/// Nova's `normalize`: maps values to 0…1 by min and max; all equal → 0.
pub fn normalize(values: &[f64]) -> Vec<f64> {
    let (min, max) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    if values.is_empty() || max - min == 0.0 || !(max - min).is_finite() {
        return vec![0.0; values.len()];
    }
    values.iter().map(|v| (v - min) / (max - min)).collect()
}

/// The weights of `hosts` (same order): the sum over `weighers` of
/// multiplier × normalised raw value.
pub fn weigh(
    hosts: &[&HostState],
    weighers: &[Box<dyn Weigher>],
    cfg: &FilterScheduler,
) -> Vec<f64> {
    let mut total = vec![0.0; hosts.len()];
    for w in weighers {
        let m = w.multiplier(cfg);
        if m == 0.0 {
            continue;
        }
        let raw: Vec<f64> = hosts.iter().map(|h| w.raw(h)).collect();
        for (t, n) in total.iter_mut().zip(normalize(&raw)) {
            *t += m * n;
        }
    }
    total
}

/// Indices of `weights` from the highest to the lowest, ties in random
/// order.
pub fn rank(weights: &[f64], rng: &mut fastrand::Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..weights.len()).collect();
    rng.shuffle(&mut order);
    order.sort_by(|a, b| weights[*b].total_cmp(&weights[*a]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::placement::Inventory;

    fn host(name: &str, free_ram: i64, free_cpu: i64, free_disk: i64) -> HostState {
        let inv = |rc: &str, total: i64| Inventory {
            resource_class: rc.into(),
            total,
            reserved: 0,
            min_unit: 1,
            max_unit: total,
            step_size: 1,
            allocation_ratio: 1.0,
        };
        let mut h = HostState::new(
            name,
            name,
            vec![
                inv("MEMORY_MB", 10_000),
                inv("VCPU", 100),
                inv("DISK_GB", 1000),
            ],
        );
        h.used.insert("MEMORY_MB".into(), 10_000 - free_ram);
        h.used.insert("VCPU".into(), 100 - free_cpu);
        h.used.insert("DISK_GB".into(), 1000 - free_disk);
        h
    }

    fn only(name: &str, m: f64) -> (Vec<Box<dyn Weigher>>, FilterScheduler) {
        let mut cfg = FilterScheduler {
            ram_weight_multiplier: 0.0,
            cpu_weight_multiplier: 0.0,
            disk_weight_multiplier: 0.0,
            num_instances_weight_multiplier: 0.0,
            build_failure_weight_multiplier: 0.0,
            ..FilterScheduler::default()
        };
        match name {
            "RAMWeigher" => cfg.ram_weight_multiplier = m,
            "CPUWeigher" => cfg.cpu_weight_multiplier = m,
            "DiskWeigher" => cfg.disk_weight_multiplier = m,
            "NumInstancesWeigher" => cfg.num_instances_weight_multiplier = m,
            "BuildFailureWeigher" => cfg.build_failure_weight_multiplier = m,
            _ => unreachable!(),
        }
        (vec![by_name(name).unwrap()], cfg)
    }

    fn best(hosts: &[HostState], weighers: &[Box<dyn Weigher>], cfg: &FilterScheduler) -> String {
        let refs: Vec<&HostState> = hosts.iter().collect();
        let w = weigh(&refs, weighers, cfg);
        let order = rank(&w, &mut fastrand::Rng::with_seed(1));
        hosts[order[0]].host.clone()
    }

    #[test]
    fn normalisation_is_novas() {
        assert_eq!(normalize(&[1.0, 3.0, 2.0]), vec![0.0, 1.0, 0.5]);
        assert_eq!(normalize(&[5.0, 5.0]), vec![0.0, 0.0]);
        assert!(normalize(&[]).is_empty());
    }

    #[test]
    fn ram_spreads_or_packs() {
        let hosts = [host("a", 1000, 50, 500), host("b", 4000, 50, 500)];
        let (w, cfg) = only("RAMWeigher", 1.0);
        assert_eq!(best(&hosts, &w, &cfg), "b");
        let (w, cfg) = only("RAMWeigher", -1.0);
        assert_eq!(best(&hosts, &w, &cfg), "a");
    }

    #[test]
    fn cpu_spreads_or_packs() {
        let hosts = [host("a", 1000, 90, 500), host("b", 1000, 10, 500)];
        let (w, cfg) = only("CPUWeigher", 1.0);
        assert_eq!(best(&hosts, &w, &cfg), "a");
        let (w, cfg) = only("CPUWeigher", -2.0);
        assert_eq!(best(&hosts, &w, &cfg), "b");
    }

    #[test]
    fn disk_spreads_or_packs() {
        let hosts = [host("a", 1000, 50, 100), host("b", 1000, 50, 900)];
        let (w, cfg) = only("DiskWeigher", 1.0);
        assert_eq!(best(&hosts, &w, &cfg), "b");
        let (w, cfg) = only("DiskWeigher", -1.0);
        assert_eq!(best(&hosts, &w, &cfg), "a");
    }

    #[test]
    fn num_instances_packs_when_positive() {
        let mut hosts = [host("a", 1000, 50, 500), host("b", 1000, 50, 500)];
        hosts[0].num_instances = 5;
        hosts[1].num_instances = 1;
        let (w, cfg) = only("NumInstancesWeigher", 1.0);
        assert_eq!(best(&hosts, &w, &cfg), "a");
        let (w, cfg) = only("NumInstancesWeigher", -1.0);
        assert_eq!(best(&hosts, &w, &cfg), "b");
    }

    #[test]
    fn build_failures_sink_a_host() {
        let mut hosts = [host("a", 9000, 90, 900), host("b", 1000, 10, 100)];
        hosts[0].failed_builds = 1;
        let cfg = FilterScheduler::default();
        let all: Vec<Box<dyn Weigher>> = ALL_WEIGHERS.iter().map(|n| by_name(n).unwrap()).collect();
        assert_eq!(
            best(&hosts, &all, &cfg),
            "b",
            "one failure outweighs every free resource"
        );
        hosts[0].failed_builds = 0;
        assert_eq!(best(&hosts, &all, &cfg), "a");
    }

    #[test]
    fn weights_are_normalised_multiplied_and_summed() {
        let hosts = [
            host("a", 0, 100, 0),
            host("b", 10_000, 0, 500),
            host("c", 5000, 50, 1000),
        ];
        let refs: Vec<&HostState> = hosts.iter().collect();
        let cfg = FilterScheduler {
            ram_weight_multiplier: 2.0,
            cpu_weight_multiplier: 1.0,
            disk_weight_multiplier: 0.5,
            ..FilterScheduler::default()
        };
        let ws: Vec<Box<dyn Weigher>> = ["RAMWeigher", "CPUWeigher", "DiskWeigher"]
            .iter()
            .map(|n| by_name(n).unwrap())
            .collect();
        let w = weigh(&refs, &ws, &cfg);
        assert_eq!(w, vec![1.0, 2.0 + 0.25, 1.0 + 0.5 + 0.5]);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let hosts = [
            host("a", 10, 10, 10),
            host("b", 10, 10, 10),
            host("c", 10, 10, 10),
        ];
        let refs: Vec<&HostState> = hosts.iter().collect();
        let cfg = FilterScheduler::default();
        let ws: Vec<Box<dyn Weigher>> = ALL_WEIGHERS.iter().map(|n| by_name(n).unwrap()).collect();
        let w = weigh(&refs, &ws, &cfg);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..100 {
            firsts.insert(rank(&w, &mut rng)[0]);
        }
        assert_eq!(firsts.len(), 3, "each tied host wins sometimes");
    }

    #[test]
    fn every_weigher_is_known_by_its_name() {
        for n in ALL_WEIGHERS {
            assert_eq!(by_name(n).unwrap().name(), n);
        }
    }
}
