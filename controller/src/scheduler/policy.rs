//! The decision itself, on hosts in memory: placement's cut (capacity,
//! traits, aggregates), then the filters, then the weighers; the best host
//! is chosen (at random among the `host_subset_size` best), the next ones
//! become its alternates, and its resources are consumed virtually so that
//! the next instance of the same request sees them gone.

use std::collections::BTreeSet;

use super::filters::{self, Filter, FilterEnv};
use super::host_state::{HostState, RequestSpec};
use super::weighers::{self, Weigher};
use crate::config::{Config, FilterScheduler};
use crate::error::{Error, Result};

/// A host chosen for an instance, with the next best hosts to try if the
/// build fails there.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// The host.
    pub host: String,
    /// Its resource provider.
    pub provider_uuid: String,
    /// The alternates, best first (at most `max_attempts - 1`).
    pub alternates: Vec<Alternate>,
}

/// An alternate host.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alternate {
    /// The host.
    pub host: String,
    /// Its resource provider.
    pub provider_uuid: String,
}

/// No host passed: why, stage by stage.
#[derive(Debug, Clone, PartialEq)]
pub struct NoValidHost {
    /// Hosts left after each stage: `placement: 20, ComputeFilter: 20, …`.
    pub details: String,
}

impl NoValidHost {
    /// Nova's message.
    pub const MESSAGE: &'static str =
        "No valid host was found. There are not enough hosts available.";
}

/// Filters, weighers and their configuration.
pub struct Policy {
    filters: Vec<Box<dyn Filter>>,
    weighers: Vec<Box<dyn Weigher>>,
    cfg: FilterScheduler,
    /// Hosts tried per instance (so alternates: `max_attempts - 1`).
    pub max_attempts: u32,
    /// See [`FilterEnv`].
    pub service_down_time: i64,
    /// See [`FilterEnv`].
    pub default_availability_zone: String,
}

impl Policy {
    /// The policy of `config`; unknown filter or weigher names are an error.
    pub fn from_config(config: &Config) -> Result<Policy> {
        let fs = &config.filter_scheduler;
        let filters = fs
            .enabled_filters
            .iter()
            .map(|n| {
                filters::by_name(n).ok_or_else(|| {
                    Error::bad_request(format!(
                        "[filter_scheduler] enabled_filters: unknown filter `{n}` (known: {})",
                        filters::ALL_FILTERS.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let weighers = fs
            .weighers
            .iter()
            .map(|n| {
                weighers::by_name(n).ok_or_else(|| {
                    Error::bad_request(format!(
                        "[filter_scheduler] weighers: unknown weigher `{n}` (known: {})",
                        weighers::ALL_WEIGHERS.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Policy {
            filters,
            weighers,
            cfg: fs.clone(),
            max_attempts: config.scheduler.max_attempts.max(1),
            service_down_time: config.compute.service_down_time_secs,
            default_availability_zone: config.compute.default_availability_zone.clone(),
        })
    }

    fn env(&self) -> FilterEnv {
        FilterEnv {
            now: crate::db::Timestamp::now(),
            service_down_time: self.service_down_time,
            default_availability_zone: self.default_availability_zone.clone(),
        }
    }

    /// Placement's cut: the host alone holds the resources, has the
    /// required traits and none of the forbidden ones, and is in the
    /// requested aggregates.
    pub fn placement_passes(host: &HostState, spec: &RequestSpec) -> bool {
        host.fits(&spec.resources)
            && spec.required_traits.iter().all(|t| host.traits.contains(t))
            && !spec
                .forbidden_traits
                .iter()
                .any(|t| host.traits.contains(t))
            && spec
                .member_of
                .iter()
                .all(|any| any.iter().any(|a| host.placement_aggregates.contains(a)))
    }

    /// The indices of the hosts that pass, and how many were left after
    /// each stage.
    pub fn passing(
        &self,
        hosts: &[HostState],
        spec: &RequestSpec,
    ) -> (Vec<usize>, Vec<(String, usize)>) {
        let mut trace = Vec::new();
        let mut left: Vec<usize> = (0..hosts.len())
            .filter(|i| Self::placement_passes(&hosts[*i], spec))
            .collect();
        trace.push(("placement".to_owned(), left.len()));
        if let Some(forced) = &spec.force_host {
            // Nova: a forced host skips the filters; placement still counts.
            left.retain(|i| hosts[*i].host == *forced);
            trace.push((format!("force_host={forced}"), left.len()));
            return (left, trace);
        }
        let env = self.env();
        for f in &self.filters {
            left.retain(|i| f.passes(&hosts[*i], spec, &env));
            trace.push((f.name().to_owned(), left.len()));
            if left.is_empty() {
                break;
            }
        }
        (left, trace)
    }

    /// Chooses a host for one instance of `spec` among `hosts`, with its
    /// alternates, consuming its resources virtually (in `hosts` and in the
    /// group's placements of `spec`). Hosts in `exclude` are not chosen.
    pub fn choose(
        &self,
        hosts: &mut [HostState],
        spec: &mut RequestSpec,
        exclude: &BTreeSet<String>,
        rng: &mut fastrand::Rng,
    ) -> std::result::Result<(usize, Vec<usize>), NoValidHost> {
        let (mut left, trace) = self.passing(hosts, spec);
        left.retain(|i| !exclude.contains(&hosts[*i].host));
        if left.is_empty() {
            return Err(NoValidHost {
                details: trace
                    .iter()
                    .map(|(s, n)| format!("{s}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let refs: Vec<&HostState> = left.iter().map(|i| &hosts[*i]).collect();
        let weights = weighers::weigh(&refs, &self.weighers, &self.cfg);
        let order: Vec<usize> = weighers::rank(&weights, rng)
            .into_iter()
            .map(|k| left[k])
            .collect();
        let subset = (self.cfg.host_subset_size.max(1) as usize).min(order.len());
        let pick = rng.usize(0..subset);
        let chosen = order[pick];
        let alternates: Vec<usize> = order
            .iter()
            .copied()
            .filter(|i| *i != chosen)
            .take(self.max_attempts as usize - 1)
            .collect();
        hosts[chosen].consume(&spec.resources);
        if let Some(g) = spec.group.as_mut() {
            *g.hosts.entry(hosts[chosen].host.clone()).or_default() += 1;
        }
        Ok((chosen, alternates))
    }

    /// Chooses hosts for `n` instances of `spec` in turn (each consuming
    /// virtually before the next is placed), without claiming anything.
    pub fn select(
        &self,
        hosts: &mut [HostState],
        spec: &RequestSpec,
        n: usize,
        rng: &mut fastrand::Rng,
    ) -> Vec<std::result::Result<Selection, NoValidHost>> {
        let mut spec = spec.clone();
        (0..n)
            .map(|_| {
                self.choose(hosts, &mut spec, &BTreeSet::new(), rng)
                    .map(|(c, alts)| selection(hosts, c, &alts))
            })
            .collect()
    }
}

/// The selection of host `chosen` with alternates `alts`.
pub fn selection(hosts: &[HostState], chosen: usize, alts: &[usize]) -> Selection {
    Selection {
        host: hosts[chosen].host.clone(),
        provider_uuid: hosts[chosen].provider_uuid.clone(),
        alternates: alts
            .iter()
            .map(|i| Alternate {
                host: hosts[*i].host.clone(),
                provider_uuid: hosts[*i].provider_uuid.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Timestamp;
    use crate::db::placement::Inventory;
    use crate::scheduler::host_state::{GroupSpec, ServiceInfo};

    fn host(n: usize, vcpus: i64, ram: i64) -> HostState {
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
            &format!("host-{n}"),
            &format!("rp-{n}"),
            vec![
                inv("VCPU", vcpus),
                inv("MEMORY_MB", ram),
                inv("DISK_GB", 1000),
            ],
        );
        h.service = Some(ServiceInfo {
            disabled: false,
            forced_down: false,
            last_seen: Some(Timestamp::now()),
        });
        h
    }

    fn spec(vcpus: i64, ram: i64) -> RequestSpec {
        RequestSpec {
            resources: [
                ("VCPU".to_string(), vcpus),
                ("MEMORY_MB".to_string(), ram),
                ("DISK_GB".to_string(), 1),
            ]
            .into(),
            ..RequestSpec::default()
        }
    }

    fn policy(tweak: impl FnOnce(&mut Config)) -> Policy {
        let mut c = Config::default();
        tweak(&mut c);
        Policy::from_config(&c).unwrap()
    }

    #[test]
    fn unknown_names_are_refused() {
        let mut c = Config::default();
        c.filter_scheduler
            .enabled_filters
            .push("NoSuchFilter".into());
        assert!(Policy::from_config(&c).is_err());
        let mut c = Config::default();
        c.filter_scheduler.weighers = vec!["Nope".into()];
        assert!(Policy::from_config(&c).is_err());
    }

    #[test]
    fn multi_create_spreads_with_virtual_consumption() {
        let p = policy(|_| {});
        let mut hosts: Vec<HostState> = (0..4).map(|n| host(n, 8, 8192)).collect();
        let mut rng = fastrand::Rng::with_seed(3);
        let picks = p.select(&mut hosts, &spec(2, 2048), 4, &mut rng);
        let chosen: BTreeSet<String> = picks
            .iter()
            .map(|s| s.as_ref().unwrap().host.clone())
            .collect();
        assert_eq!(
            chosen.len(),
            4,
            "RAM and CPU weighers spread four instances over four hosts"
        );
        for s in &picks {
            let s = s.as_ref().unwrap();
            assert_eq!(s.alternates.len(), 2, "max_attempts 3: two alternates");
            assert!(s.alternates.iter().all(|a| a.host != s.host));
        }
        assert!(
            hosts
                .iter()
                .all(|h| h.usage("VCPU") == 2 && h.num_instances == 1)
        );
    }

    #[test]
    fn multi_create_packs_with_negative_multipliers() {
        let p = policy(|c| {
            c.filter_scheduler.ram_weight_multiplier = -1.0;
            c.filter_scheduler.cpu_weight_multiplier = -1.0;
            c.filter_scheduler.disk_weight_multiplier = -1.0;
        });
        let mut hosts: Vec<HostState> = (0..4).map(|n| host(n, 8, 8192)).collect();
        let mut rng = fastrand::Rng::with_seed(3);
        let picks = p.select(&mut hosts, &spec(2, 2048), 6, &mut rng);
        let mut per_host = std::collections::BTreeMap::<String, usize>::new();
        for s in &picks {
            *per_host
                .entry(s.as_ref().unwrap().host.clone())
                .or_default() += 1;
        }
        let mut counts: Vec<usize> = per_host.values().copied().collect();
        counts.sort();
        assert_eq!(
            counts,
            vec![2, 4],
            "packs: fill one host (4 fit), then the next"
        );
    }

    #[test]
    fn capacity_runs_out_within_one_request() {
        let p = policy(|_| {});
        let mut hosts: Vec<HostState> = (0..2).map(|n| host(n, 4, 4096)).collect();
        let mut rng = fastrand::Rng::with_seed(1);
        let picks = p.select(&mut hosts, &spec(2, 2048), 5, &mut rng);
        assert_eq!(picks.iter().filter(|p| p.is_ok()).count(), 4);
        let err = picks[4].clone().unwrap_err();
        assert!(err.details.starts_with("placement: 0"), "{}", err.details);
    }

    #[test]
    fn forced_host_skips_filters_but_not_capacity() {
        let p = policy(|_| {});
        let mut hosts: Vec<HostState> = (0..3).map(|n| host(n, 4, 4096)).collect();
        hosts[1].service.as_mut().unwrap().disabled = true;
        let mut s = spec(2, 2048);
        s.force_host = Some("host-1".into());
        let mut rng = fastrand::Rng::with_seed(1);
        let picks = p.select(&mut hosts, &s, 3, &mut rng);
        assert_eq!(
            picks[0].as_ref().unwrap().host,
            "host-1",
            "disabled, but forced"
        );
        assert_eq!(picks[1].as_ref().unwrap().host, "host-1");
        assert!(picks[2].is_err(), "full: forcing does not overcommit");
        s.force_host = Some("host-9".into());
        assert!(p.select(&mut hosts, &s, 1, &mut rng)[0].is_err());
    }

    #[test]
    fn anti_affinity_within_one_request() {
        let p = policy(|_| {});
        let mut hosts: Vec<HostState> = (0..3).map(|n| host(n, 64, 65536)).collect();
        let mut s = spec(1, 512);
        s.group = Some(GroupSpec {
            uuid: "g".into(),
            policy: "anti-affinity".into(),
            max_server_per_host: None,
            members: vec![],
            hosts: Default::default(),
        });
        let mut rng = fastrand::Rng::with_seed(5);
        let picks = p.select(&mut hosts, &s, 4, &mut rng);
        let placed: BTreeSet<String> = picks[..3]
            .iter()
            .map(|p| p.as_ref().unwrap().host.clone())
            .collect();
        assert_eq!(placed.len(), 3);
        let err = picks[3].clone().unwrap_err();
        assert!(
            err.details.contains("ServerGroupAntiAffinityFilter: 0"),
            "{}",
            err.details
        );
    }

    #[test]
    fn affinity_within_one_request() {
        let p = policy(|_| {});
        let mut hosts: Vec<HostState> = (0..3).map(|n| host(n, 64, 65536)).collect();
        let mut s = spec(1, 512);
        s.group = Some(GroupSpec {
            uuid: "g".into(),
            policy: "affinity".into(),
            max_server_per_host: None,
            members: vec![],
            hosts: Default::default(),
        });
        let mut rng = fastrand::Rng::with_seed(5);
        let picks = p.select(&mut hosts, &s, 4, &mut rng);
        let placed: BTreeSet<String> = picks
            .iter()
            .map(|p| p.as_ref().unwrap().host.clone())
            .collect();
        assert_eq!(placed.len(), 1, "all on one host");
    }

    #[test]
    fn traits_and_aggregates_cut_like_placement() {
        let p = policy(|_| {});
        let mut hosts: Vec<HostState> = (0..3).map(|n| host(n, 8, 8192)).collect();
        hosts[0].traits.insert("CUSTOM_GOLD".into());
        hosts[1].traits.insert("CUSTOM_GOLD".into());
        hosts[1].traits.insert("COMPUTE_STATUS_DISABLED".into());
        hosts[2].placement_aggregates.insert("agg".into());
        let mut s = spec(1, 512);
        s.required_traits.insert("CUSTOM_GOLD".into());
        s.forbidden_traits.insert("COMPUTE_STATUS_DISABLED".into());
        let (left, _) = p.passing(&hosts, &s);
        assert_eq!(left, vec![0]);
        let mut s = spec(1, 512);
        s.member_of = vec![vec!["agg".into(), "other".into()]];
        assert_eq!(p.passing(&hosts, &s).0, vec![2]);
    }

    #[test]
    fn excluded_hosts_are_not_chosen_and_subset_randomizes() {
        let p = policy(|c| c.filter_scheduler.host_subset_size = 3);
        let mut rng = fastrand::Rng::with_seed(9);
        let mut seen = BTreeSet::new();
        for _ in 0..60 {
            let mut hosts: Vec<HostState> = (0..3).map(|n| host(n, 8, 8192)).collect();
            hosts[0].used.insert("MEMORY_MB".into(), 4096);
            let mut s = spec(1, 512);
            let exclude: BTreeSet<String> = ["host-2".to_string()].into();
            let (c, _) = p.choose(&mut hosts, &mut s, &exclude, &mut rng).unwrap();
            seen.insert(hosts[c].host.clone());
        }
        assert_eq!(seen, ["host-0".to_string(), "host-1".to_string()].into());
    }
}
