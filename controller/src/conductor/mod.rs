//! The conductor (Nova's `nova-conductor`): serves the `conductor` topic,
//! turns accepted work into persisted sagas ([`crate::saga`]), and makes
//! every database write on behalf of agents.
//!
//! | from | method | what happens |
//! |---|---|---|
//! | API | `schedule_and_build` | one [`build::Build`] saga per instance (a multi-create is scheduled together first) |
//! | API | `run_instance_action` | an [`actions::PowerSaga`] (stop, start, reboot, pause, unpause, suspend, resume) or a [`actions::DeleteSaga`] |
//! | agent | `service_register`, `service_heartbeat` | the host's `nova-compute` service row |
//! | agent | `update_provider` | the host's resource provider (inventories, traits) and compute node |
//! | agent | `instance_build_finished`, `instance_action_finished`, `instance_terminated` | a signal for the saga waiting on it |
//! | agent | `host_instances`, `power_state_changed` | power-state sync |
//!
//! The build of an instance:
//!
//! ```text
//!  ids ─► schedule ─► assign ─► cast build_and_run_instance ─► wait for the report ─► active
//!           │undo: free     │undo: clear    │undo: cast terminate_instance
//!           │the claim      │host, ports    │(the agent cleans up)
//!  on failure, once unwound: another attempt on an alternate host (up to
//!  [scheduler] max_attempts), else vm_state error with a fault.
//! ```
//!
//! Reports reach the saga through signals, whichever replica receives them.
//! A periodic task ([`periodic`]) resets task states no saga is behind and
//! cleans old sagas and signals.

pub mod actions;
pub mod agents;
pub mod build;
pub mod periodic;
pub mod spec;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mica_rpc::conductor::{
    self, HostInstances, InstanceActionFinished, InstanceBuildFinished, InstanceTerminated,
    PowerStateChanged, RunInstanceAction, ScheduleAndBuild, ServiceHeartbeat, ServiceRegister,
    UpdateProvider,
};
use mica_rpc::{Dispatcher, RemoteError, Rpc, Server, Subscription, Topic};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::error::{Error, Kind, Result};
use crate::saga::{Engine, EngineBuilder, EngineOptions, TestHooks, is_transient};
use crate::scheduler::host_state::ServiceInfo;
use crate::scheduler::rpc::SchedulerClient;

/// What every saga and handler of the conductor shares.
pub struct Conductor {
    /// The app layer (database, configuration).
    pub app: Arc<App>,
    /// The bus (to cast to agents).
    pub rpc: Rpc,
    /// The scheduler.
    pub scheduler: SchedulerClient,
    image_url: Mutex<Option<(Instant, String)>>,
    services: tokio::sync::Mutex<(Option<Instant>, HashMap<String, ServiceInfo>)>,
}

impl Conductor {
    /// Whether `host`'s compute service is up (heard from within
    /// `[compute] service_down_time_secs`, not forced down). The service
    /// rows are read at most once a second for every waiting saga.
    pub async fn host_is_up(&self, host: &str) -> Result<bool> {
        let mut cache = self.services.lock().await;
        if cache
            .0
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            let rows = crate::db::hosts::list_services(
                self.app.db.pool(),
                None,
                Some(agents::COMPUTE_BINARY),
            )
            .await?;
            cache.1 = rows
                .into_iter()
                .map(|s| {
                    (
                        s.host.clone(),
                        ServiceInfo {
                            disabled: s.disabled,
                            forced_down: s.forced_down,
                            last_seen: Some(s.updated_at.unwrap_or(s.created_at)),
                        },
                    )
                })
                .collect();
            cache.0 = Some(Instant::now());
        }
        Ok(cache.1.get(host).is_some_and(|s| {
            s.is_up(
                crate::db::Timestamp::now(),
                self.app.config.compute.service_down_time_secs,
            )
        }))
    }

    /// The image API URL agents download from (cached for a minute).
    pub async fn image_url(&self) -> Result<String> {
        if let Some((at, url)) = self
            .image_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(url);
        }
        let url = spec::image_api_url(self).await?;
        *self.image_url.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), url.clone()));
        Ok(url)
    }

    /// The configuration of the conductor.
    pub fn cfg(&self) -> &crate::config::Conductor {
        &self.app.config.conductor
    }
}

/// How to run a conductor.
#[derive(Clone)]
pub struct ConductorOptions {
    /// The saga engine's options (owner name, lease, test hooks).
    pub engine: EngineOptions,
    /// Run the periodic tasks.
    pub periodic: bool,
}

impl ConductorOptions {
    /// From `[conductor]`.
    pub fn from_config(app: &App) -> ConductorOptions {
        let c = &app.config.conductor;
        let mut engine = EngineOptions::new(Duration::from_secs(c.saga_lease_secs.max(1)));
        engine.signal_poll = Duration::from_millis(c.signal_poll_ms.max(10));
        engine.concurrency = c.saga_concurrency.max(1) as usize;
        ConductorOptions {
            engine,
            periodic: true,
        }
    }

    /// With these test hooks.
    #[must_use]
    pub fn with_hooks(mut self, hooks: Arc<TestHooks>) -> Self {
        self.engine.hooks = hooks;
        self
    }
}

/// A running conductor.
pub struct Running {
    engine: Engine<Conductor>,
    server: Option<Server>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts a conductor: the saga engine (adopting sagas whose owner went
    /// away), the `conductor` topic, and the periodic tasks.
    pub async fn start(
        app: Arc<App>,
        rpc: Rpc,
        scheduler: SchedulerClient,
        options: ConductorOptions,
    ) -> Result<Running> {
        let ctx = Arc::new(Conductor {
            app: app.clone(),
            rpc: rpc.clone(),
            scheduler,
            image_url: Mutex::new(None),
            services: tokio::sync::Mutex::new((None, HashMap::new())),
        });
        let engine = EngineBuilder::new(app.db.clone(), ctx, options.engine)
            .register::<build::Build>()
            .register::<actions::PowerSaga>()
            .register::<actions::DeleteSaga>()
            .build();
        engine.start();
        let server = rpc
            .serve(
                [Subscription::Topic(Topic::conductor())],
                dispatcher(&engine),
            )
            .await
            .map_err(|e| {
                Error::new(
                    Kind::ServiceUnavailable,
                    format!("cannot serve the conductor topic: {e}"),
                )
            })?;
        let mut tasks = Vec::new();
        if options.periodic {
            tasks.push(periodic::start(engine.clone()));
        }
        tracing::info!(owner = engine.owner(), "conductor running");
        Ok(Running {
            engine,
            server: Some(server),
            tasks,
        })
    }

    /// The saga engine.
    pub fn engine(&self) -> &Engine<Conductor> {
        &self.engine
    }

    /// Stops taking messages (those being handled finish), stops the sagas
    /// where they are and hands them over (their leases released).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.engine.shutdown().await;
    }

    /// Stops everything at once, as a crash would (tests).
    pub fn halt(mut self) {
        drop(self.server.take());
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.engine.halt();
    }
}

/// Runs `f` until it succeeds, fails for good, or has failed transiently
/// for a minute (a handler must not lose a message because the database
/// blinked; the bus redelivers it if we die meanwhile).
pub(crate) async fn persist<T, F, Fut>(what: &str, mut f: F) -> std::result::Result<T, RemoteError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && started.elapsed() < Duration::from_secs(60) => {
                tracing::warn!(what, error = ?e, "transient error; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(what, error = ?e, "failed");
                return Err(RemoteError::new(
                    if e.kind == Kind::NotFound {
                        "not_found"
                    } else {
                        "conductor_error"
                    },
                    e.message.clone(),
                ));
            }
        }
    }
}

fn dispatcher(engine: &Engine<Conductor>) -> Dispatcher {
    let e = engine.clone();
    let mut d = Dispatcher::new(conductor::VERSION);
    macro_rules! route {
        ($method:ty, $f:path) => {{
            let e = e.clone();
            d = d.handle_method::<$method>(move |_ctx, req| {
                let e = e.clone();
                async move { $f(&e, req).await }
            });
        }};
    }
    route!(ScheduleAndBuild, build::schedule_and_build);
    route!(RunInstanceAction, actions::run_instance_action);
    route!(ServiceRegister, agents::register);
    route!(ServiceHeartbeat, agents::heartbeat);
    route!(UpdateProvider, agents::update_provider);
    route!(InstanceBuildFinished, agents::build_finished);
    route!(InstanceActionFinished, agents::action_finished);
    route!(InstanceTerminated, agents::terminated);
    route!(HostInstances, agents::host_instances);
    route!(PowerStateChanged, agents::power_state_changed);
    d
}
