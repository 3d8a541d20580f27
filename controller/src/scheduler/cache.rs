//! The scheduler's view of every compute host (see [`super`]'s docs):
//! provider states kept current by a delta read per decision, host
//! information refreshed in the background, in-flight claims counted as
//! used.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::host_state::{HostAggregate, HostState, Hypervisor, Resources, ServiceInfo};
use crate::app::App;
use crate::db::Timestamp;
use crate::db::scheduler::{self as store, ProviderState};
use crate::error::Result;

/// How far back a delta read looks before the previous one began: commits
/// land out of order by up to a transaction's length (and replicas' clocks
/// differ a little). A change missed anyway only costs a retry: claims are
/// checked.
const DELTA_MARGIN_MS: i64 = 500;

/// What changes slowly about a host (from the compute API's tables).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostInfo {
    /// Its compute service.
    pub service: Option<ServiceInfo>,
    /// Its hypervisor.
    pub hypervisor: Hypervisor,
    /// Its Nova aggregates.
    pub aggregates: Vec<HostAggregate>,
    /// Instances on it.
    pub num_instances: u32,
    /// Recent build failures.
    pub failed_builds: u32,
}

#[derive(Default)]
struct State {
    hosts: Vec<HostState>,
    index: HashMap<String, usize>,
    infos: HashMap<String, HostInfo>,
    since: Option<Timestamp>,
    last_full: Option<Instant>,
    info_loaded: bool,
}

impl State {
    fn apply_info(host: &mut HostState, info: Option<&HostInfo>) {
        let info = info.cloned().unwrap_or_default();
        host.service = info.service;
        host.hypervisor = info.hypervisor;
        host.aggregates = info.aggregates;
        host.failed_builds = info.failed_builds;
        host.num_instances = info.num_instances;
    }

    /// Applies provider states read from the database (newer generations
    /// only; pending claims kept). With `complete`, providers absent from
    /// `states` are dropped.
    fn apply(&mut self, states: Vec<ProviderState>, complete: bool) {
        let seen: BTreeSet<String> = states.iter().map(|s| s.uuid.clone()).collect();
        for s in states {
            match self.index.get(&s.uuid) {
                Some(i) if self.hosts[*i].generation > s.generation => {}
                Some(i) => {
                    let h = &mut self.hosts[*i];
                    fill(h, s);
                }
                None => {
                    let mut h = HostState::new(&s.name, &s.uuid, vec![]);
                    fill(&mut h, s);
                    let info = self.infos.get(&h.host).cloned();
                    State::apply_info(&mut h, info.as_ref());
                    self.index.insert(h.provider_uuid.clone(), self.hosts.len());
                    self.hosts.push(h);
                }
            }
        }
        if complete && self.hosts.len() != seen.len() {
            self.hosts.retain(|h| seen.contains(&h.provider_uuid));
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        self.index = self
            .hosts
            .iter()
            .enumerate()
            .map(|(n, h)| (h.provider_uuid.clone(), n))
            .collect();
    }
}

fn fill(h: &mut HostState, s: ProviderState) {
    h.host = s.name;
    h.generation = s.generation;
    h.inventories.clear();
    h.used.clear();
    for (inv, used) in s.inventories {
        if used > 0 {
            h.used.insert(inv.resource_class.clone(), used);
        }
        h.inventories.insert(inv.resource_class.clone(), inv);
    }
    h.traits = s.traits.into_iter().collect();
    h.placement_aggregates = s.aggregates.into_iter().collect();
}

/// See the module docs.
pub struct HostCache {
    app: Arc<App>,
    state: Mutex<State>,
    /// One database read at a time; callers that waited for another's read
    /// use it instead of reading again.
    gate: tokio::sync::Mutex<()>,
    reads: AtomicU64,
}

impl HostCache {
    /// An empty cache over `app`'s database.
    pub fn new(app: Arc<App>) -> HostCache {
        HostCache {
            app,
            state: Mutex::default(),
            gate: tokio::sync::Mutex::new(()),
            reads: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn full_every(&self) -> Duration {
        Duration::from_secs(self.app.config.scheduler.full_refresh_secs.max(1))
    }

    /// Brings the cache up to date before a decision: a delta read (or a
    /// full one when due). Concurrent callers share one read.
    pub async fn refresh(&self) -> Result<()> {
        let seen = self.reads.load(Ordering::Acquire);
        let _gate = self.gate.lock().await;
        if self.reads.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        if !self.state().info_loaded {
            self.refresh_info_locked().await?;
        }
        let (since, full_due) = {
            let st = self.state();
            (
                st.since,
                st.last_full
                    .is_none_or(|t| t.elapsed() >= self.full_every())
                    || !self.app.config.scheduler.host_state_cache,
            )
        };
        match since {
            Some(since) if !full_due => self.delta(since).await?,
            _ => self.reload_locked().await?,
        }
        self.reads.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    async fn delta(&self, since: Timestamp) -> Result<()> {
        let start = Timestamp::now();
        let from = Timestamp(since.0 - chrono::Duration::milliseconds(DELTA_MARGIN_MS));
        let changed = store::changed_providers(self.app.db.pool(), from).await?;
        let stale: Vec<String> = {
            let st = self.state();
            changed
                .into_iter()
                .filter(|(u, g)| st.index.get(u).map(|i| st.hosts[*i].generation) != Some(*g))
                .map(|(u, _)| u)
                .collect()
        };
        if !stale.is_empty() {
            let mut conn = self.app.db.pool().acquire().await?;
            let states = store::provider_states(&mut conn, Some(&stale)).await?;
            self.state().apply(states, false);
        }
        self.state().since = Some(start);
        Ok(())
    }

    /// Reads every provider again.
    pub async fn reload(&self) -> Result<()> {
        let _gate = self.gate.lock().await;
        self.reload_locked().await?;
        self.reads.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    async fn reload_locked(&self) -> Result<()> {
        let start = Timestamp::now();
        let begun = Instant::now();
        let mut conn = self.app.db.pool().acquire().await?;
        let states = store::provider_states(&mut conn, None).await?;
        drop(conn);
        let mut st = self.state();
        st.apply(states, true);
        st.since = Some(start);
        st.last_full = Some(begun);
        Ok(())
    }

    /// Reads `providers` again (after a lost race on them).
    pub async fn reload_providers(&self, providers: &[String]) -> Result<()> {
        if providers.is_empty() {
            return Ok(());
        }
        let mut conn = self.app.db.pool().acquire().await?;
        let states = store::provider_states(&mut conn, Some(providers)).await?;
        drop(conn);
        self.state().apply(states, false);
        Ok(())
    }

    /// Reads the slowly changing host information again.
    pub async fn refresh_info(&self) -> Result<()> {
        let _gate = self.gate.lock().await;
        self.refresh_info_locked().await
    }

    async fn refresh_info_locked(&self) -> Result<()> {
        let mut conn = self.app.db.pool().acquire().await?;
        let infos = store::host_infos(&mut conn).await?;
        drop(conn);
        let mut st = self.state();
        st.infos = infos;
        st.info_loaded = true;
        let State { hosts, infos, .. } = &mut *st;
        for h in hosts.iter_mut() {
            State::apply_info(h, infos.get(&h.host));
        }
        Ok(())
    }

    /// Runs `f` on the hosts (under the cache's lock: keep it short).
    pub fn with_hosts<T>(&self, f: impl FnOnce(&mut [HostState]) -> T) -> T {
        f(&mut self.state().hosts)
    }

    /// The cached generation of a provider.
    pub fn generation(&self, provider: &str) -> Option<i64> {
        let st = self.state();
        st.index.get(provider).map(|i| st.hosts[*i].generation)
    }

    /// The host name of a provider.
    pub fn host_of(&self, provider: &str) -> Option<String> {
        let st = self.state();
        st.index.get(provider).map(|i| st.hosts[*i].host.clone())
    }

    /// A copy of one host's state (tests, operators).
    pub fn host(&self, provider: &str) -> Option<HostState> {
        let st = self.state();
        st.index.get(provider).map(|i| st.hosts[*i].clone())
    }

    /// How many hosts are cached.
    pub fn len(&self) -> usize {
        self.state().hosts.len()
    }

    /// Whether no host is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes back an in-flight consumption.
    pub fn release(&self, provider: &str, resources: &Resources) {
        let mut st = self.state();
        if let Some(i) = st.index.get(provider).copied() {
            st.hosts[i].release(resources);
        }
    }

    /// Turns an in-flight consumption into a landed claim.
    pub fn landed(&self, provider: &str, resources: &Resources, generation: i64) {
        let mut st = self.state();
        if let Some(i) = st.index.get(provider).copied() {
            st.hosts[i].landed(resources, generation);
        }
    }

    /// Consumes `resources` on `provider` if it can hold them.
    pub fn consume_if_fits(&self, provider: &str, resources: &Resources) -> bool {
        let mut st = self.state();
        match st.index.get(provider).copied() {
            Some(i) if st.hosts[i].fits(resources) => {
                st.hosts[i].consume(resources);
                true
            }
            _ => false,
        }
    }
}
