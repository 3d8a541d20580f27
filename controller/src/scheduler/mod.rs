//! The scheduler (Nova's filter scheduler): for each instance of a request,
//! placement's cut, then filters, then weighers choose a host and
//! alternates ([`policy`]); the choice is then **claimed** in placement with
//! a checked write ([`crate::db::scheduler::claim`]): the provider's
//! generation must still be the one the decision saw, and capacity is
//! re-checked in the same statement. A lost race refreshes the host and
//! decides again. Several schedulers (replicas, or concurrent requests in
//! one process) can therefore never put more on a host than its inventory
//! allows.
//!
//! # Host states
//!
//! With `[scheduler] host_state_cache` (the default) the scheduler keeps
//! every compute host's state in memory ([`cache`]): before each decision
//! it reads which providers changed (one indexed query) and re-reads only
//! those whose generation is not the one it holds; the slowly changing rest
//! (services and heartbeats, aggregates, hypervisors, instance counts) is
//! re-read in the background every `host_info_refresh_ms`, and everything
//! every `full_refresh_secs`. Claims this process has in flight count as
//! used (virtual consumption), so concurrent requests and the instances of
//! one multi-create see each other. Without the cache, every decision reads
//! every provider again (what an unlimited allocation-candidates call
//! costs).
//!
//! A decision that finds no host is only final after a full reload: the
//! cache may miss a freed host, never invent one.

pub mod cache;
pub mod filters;
pub mod host_state;
pub mod policy;
pub mod rpc;
pub mod weighers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use host_state::{GroupSpec, HostState, RequestSpec};
pub use policy::{Alternate, NoValidHost, Policy, Selection};

use crate::app::App;
use crate::db::scheduler::{self as store, ClaimOutcome, GroupGuard, HostClaim};
use crate::error::{Error, Result};
use cache::HostCache;

/// Most decisions tried for one instance before giving up for now (each
/// retry follows a lost race, so someone else made progress).
const MAX_CLAIM_TRIES: usize = 64;

/// One instance to place.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Placing {
    /// The instance (placement consumer).
    pub instance_uuid: String,
}

/// The scheduler: see the module docs. Shared by every request of a
/// process.
pub struct Scheduler {
    app: Arc<App>,
    policy: Policy,
    cache: HostCache,
    /// One claim at a time per provider in this process (so that this
    /// process's own claims don't race each other).
    claim_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    rng: Mutex<fastrand::Rng>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scheduler {
    /// A scheduler over `app`'s database and configuration.
    pub fn new(app: Arc<App>) -> Result<Arc<Scheduler>> {
        let policy = Policy::from_config(&app.config)?;
        let cache = HostCache::new(app.clone());
        Ok(Arc::new(Scheduler {
            app,
            policy,
            cache,
            claim_locks: Mutex::default(),
            rng: Mutex::new(fastrand::Rng::new()),
        }))
    }

    /// The policy (filters and weighers) in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The host cache.
    pub fn cache(&self) -> &HostCache {
        &self.cache
    }

    /// Starts the background refresh of slowly changing host information.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(me.app.config.scheduler.host_info_refresh_ms.max(50));
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = me.cache.refresh_info().await {
                    tracing::warn!(error = ?e, "refreshing host information failed");
                }
            }
        })
    }

    fn claim_lock(&self, provider: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.claim_locks)
            .entry(provider.to_owned())
            .or_default()
            .clone()
    }

    /// Chooses and claims a host for each of `instances` (in order; each
    /// sees the ones before it), with alternates. An instance that already
    /// holds allocations keeps them (its selection names that host).
    /// `exclude` hosts are never chosen (hosts already tried).
    pub async fn schedule(
        &self,
        spec: &RequestSpec,
        instances: &[Placing],
    ) -> Result<Vec<std::result::Result<Selection, NoValidHost>>> {
        let mut spec = spec.clone();
        let mut out = Vec::with_capacity(instances.len());
        for inst in instances {
            out.push(self.schedule_one(&mut spec, &inst.instance_uuid).await?);
        }
        Ok(out)
    }

    async fn schedule_one(
        &self,
        spec: &mut RequestSpec,
        instance: &str,
    ) -> Result<std::result::Result<Selection, NoValidHost>> {
        if let Some(existing) = self.existing(spec, instance).await? {
            return Ok(Ok(existing));
        }
        let exclude: BTreeSet<String> = spec.ignore_hosts.clone();
        let mut reloaded = false;
        for _ in 0..MAX_CLAIM_TRIES {
            self.cache.refresh().await?;
            let choice = {
                let mut rng = lock(&self.rng);
                self.cache.with_hosts(|hosts| {
                    self.policy
                        .choose(hosts, spec, &exclude, &mut rng)
                        .map(|(c, alts)| (policy::selection(hosts, c, &alts), hosts[c].generation))
                })
            };
            let (selection, _) = match choice {
                Ok(c) => c,
                Err(no) if reloaded => return Ok(Err(no)),
                Err(_) => {
                    // The cache may miss a freed host: decide again on
                    // everything the database has before saying no.
                    self.cache.reload().await?;
                    reloaded = true;
                    continue;
                }
            };
            match self.claim_selected(spec, instance, &selection).await? {
                ClaimOutcome::Claimed(_) => return Ok(Ok(selection)),
                ClaimOutcome::Existing(provider) => {
                    self.undo_virtual(spec, &selection);
                    let host = self.cache.host_of(&provider).unwrap_or(provider.clone());
                    return Ok(Ok(Selection {
                        host,
                        provider_uuid: provider,
                        alternates: selection.alternates,
                    }));
                }
                ClaimOutcome::GroupPolicy => {
                    // Another member got there first (another scheduler):
                    // decide again knowing where the members are now.
                    self.undo_virtual(spec, &selection);
                    self.refresh_group(spec, instance).await?;
                }
                ClaimOutcome::Stale | ClaimOutcome::NoCapacity => {
                    self.undo_virtual(spec, &selection);
                    self.cache
                        .reload_providers(std::slice::from_ref(&selection.provider_uuid))
                        .await?;
                }
            }
        }
        Err(Error::new(
            crate::error::Kind::ServiceUnavailable,
            format!("could not claim a host for {instance} after {MAX_CLAIM_TRIES} lost races"),
        ))
    }

    /// Re-reads where the other members of the request's server group hold
    /// allocations.
    async fn refresh_group(&self, spec: &mut RequestSpec, instance: &str) -> Result<()> {
        let Some(g) = spec.group.as_mut() else {
            return Ok(());
        };
        let others: Vec<String> = g
            .members
            .iter()
            .filter(|m| *m != instance)
            .cloned()
            .collect();
        let mut hosts: BTreeMap<String, u32> = BTreeMap::new();
        for (_, host) in store::member_placements(self.app.db.pool(), &others).await? {
            *hosts.entry(host).or_default() += 1;
        }
        g.hosts = hosts;
        Ok(())
    }

    /// Takes back the virtual consumption of a selection whose claim failed.
    fn undo_virtual(&self, spec: &mut RequestSpec, s: &Selection) {
        self.cache.release(&s.provider_uuid, &spec.resources);
        if let Some(g) = spec.group.as_mut()
            && let Some(n) = g.hosts.get_mut(&s.host)
        {
            *n = n.saturating_sub(1);
        }
    }

    /// Claims `selection` for `instance` (already consumed virtually) and
    /// records the outcome in the cache.
    async fn claim_selected(
        &self,
        spec: &RequestSpec,
        instance: &str,
        selection: &Selection,
    ) -> Result<ClaimOutcome> {
        let guard = self.claim_lock(&selection.provider_uuid);
        let _held = guard.lock().await;
        let generation = self
            .cache
            .generation(&selection.provider_uuid)
            .unwrap_or(-1);
        let claim = HostClaim {
            consumer_uuid: instance.to_owned(),
            project_id: spec.project_id.clone(),
            user_id: spec.user_id.clone(),
            provider_uuid: selection.provider_uuid.clone(),
            generation,
            resources: spec.resources.clone(),
            group: group_guard(spec, instance),
        };
        let outcome = self.write_claim(&claim).await?;
        if let ClaimOutcome::Claimed(g) = outcome {
            self.cache
                .landed(&selection.provider_uuid, &spec.resources, g);
        }
        Ok(outcome)
    }

    async fn write_claim(&self, claim: &HostClaim) -> Result<ClaimOutcome> {
        let db = &self.app.db;
        db.retry(|| async {
            let mut tx = db.begin().await?;
            let outcome = store::claim(&mut tx, claim).await?;
            if matches!(outcome, ClaimOutcome::Claimed(_)) {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok(outcome)
        })
        .await
    }

    /// The selection of an instance that already holds allocations.
    async fn existing(&self, spec: &RequestSpec, instance: &str) -> Result<Option<Selection>> {
        let Some(provider) = store::allocation_provider(self.app.db.pool(), instance).await? else {
            return Ok(None);
        };
        self.cache.refresh().await?;
        let host = match self.cache.host_of(&provider) {
            Some(h) => h,
            None => {
                self.cache
                    .reload_providers(std::slice::from_ref(&provider))
                    .await?;
                self.cache
                    .host_of(&provider)
                    .unwrap_or_else(|| provider.clone())
            }
        };
        let alternates = self.alternates(spec, &host);
        Ok(Some(Selection {
            host,
            provider_uuid: provider,
            alternates,
        }))
    }

    /// Alternates for an instance placed on `host` (no consumption).
    fn alternates(&self, spec: &RequestSpec, host: &str) -> Vec<Alternate> {
        let mut exclude = spec.ignore_hosts.clone();
        exclude.insert(host.to_owned());
        let mut rng = lock(&self.rng);
        self.cache.with_hosts(|hosts| {
            let (left, _) = self.policy.passing(hosts, spec);
            let left: Vec<usize> = left
                .into_iter()
                .filter(|i| !exclude.contains(&hosts[*i].host))
                .collect();
            let mut order = left.clone();
            rng.shuffle(&mut order);
            order
                .into_iter()
                .take(self.policy.max_attempts.saturating_sub(1) as usize)
                .map(|i| Alternate {
                    host: hosts[i].host.clone(),
                    provider_uuid: hosts[i].provider_uuid.clone(),
                })
                .collect()
        })
    }

    /// Claims `instance` on one of `alternates` (in order; the first that
    /// takes it wins), re-checking capacity and the group policy but not the
    /// filters (as Nova does with alternates). `None` if none can.
    pub async fn claim_alternate(
        &self,
        spec: &RequestSpec,
        instance: &str,
        alternates: &[Alternate],
    ) -> Result<Option<Selection>> {
        if let Some(existing) = self.existing(spec, instance).await? {
            return Ok(Some(existing));
        }
        for (n, alt) in alternates.iter().enumerate() {
            if spec.ignore_hosts.contains(&alt.host) {
                continue;
            }
            for _ in 0..MAX_CLAIM_TRIES {
                self.cache.refresh().await?;
                if !self
                    .cache
                    .consume_if_fits(&alt.provider_uuid, &spec.resources)
                {
                    break;
                }
                let selection = Selection {
                    host: alt.host.clone(),
                    provider_uuid: alt.provider_uuid.clone(),
                    alternates: alternates[n + 1..].to_vec(),
                };
                match self.claim_selected(spec, instance, &selection).await? {
                    ClaimOutcome::Claimed(_) => return Ok(Some(selection)),
                    ClaimOutcome::Existing(provider) => {
                        self.cache.release(&alt.provider_uuid, &spec.resources);
                        let host = self.cache.host_of(&provider).unwrap_or(provider.clone());
                        return Ok(Some(Selection {
                            host,
                            provider_uuid: provider,
                            alternates: selection.alternates,
                        }));
                    }
                    ClaimOutcome::Stale => {
                        self.cache.release(&alt.provider_uuid, &spec.resources);
                        self.cache
                            .reload_providers(std::slice::from_ref(&alt.provider_uuid))
                            .await?;
                    }
                    ClaimOutcome::NoCapacity | ClaimOutcome::GroupPolicy => {
                        self.cache.release(&alt.provider_uuid, &spec.resources);
                        break;
                    }
                }
            }
        }
        Ok(None)
    }
}

/// The group check of a claim for `instance`.
fn group_guard(spec: &RequestSpec, instance: &str) -> Option<GroupGuard> {
    let g = spec.group.as_ref()?;
    if g.policy != "affinity" && g.policy != "anti-affinity" {
        return None;
    }
    Some(GroupGuard {
        uuid: g.uuid.clone(),
        policy: g.policy.clone(),
        max_per_host: i64::from(g.max_server_per_host.unwrap_or(1).max(1)),
        members: g
            .members
            .iter()
            .filter(|m| *m != instance)
            .cloned()
            .collect(),
    })
}
