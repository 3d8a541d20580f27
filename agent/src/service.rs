//! The agent's service life, the same for every [`Backend`]: it serves the
//! compute interface on `compute.<host>` (and the fanout to all computes),
//! registers through the conductor, heartbeats, keeps placement's view of the
//! host current, forwards what the backend notices, and reconciles power
//! states with the database on an interval (Nova's `_sync_power_states`).
//!
//! ```text
//!  conductor ──cast build/terminate/power_action──► handler ─spawn─► backend ─► report cast
//!            ──call get_console_output/host_state─► handler ─► backend ─► reply
//!  proxy     ──call console_connect──────────────► handler ─► backend (socket) ─► ticket
//!            ──TCP, ticket──► [`crate::console`] channel ─► the VMM's console socket
//!  agent ──call service_register, update_provider, host_instances──► conductor
//!        ──cast service_heartbeat, power_state_changed, *_finished──► conductor
//! ```
//!
//! Long operations are casts handled in tasks of their own, so the bus acks
//! them at once; their outcome goes back as a cast (see `mica_rpc`'s
//! semantics). A redelivered cast runs again, which the backends make
//! harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mica_rpc::compute::{
    self, BuildAndRunInstance, BuildRequest, ConsoleConnect, ConsoleOutput, GetConsoleOutput,
    GetHostState, HostInstance, HostState, PowerAction, PowerActionRequest, PowerState,
    TerminateInstance, TerminateRequest,
};
use mica_rpc::conductor::{
    ActionFinished, BuildFinished, Failure, Heartbeat, HostInstances, HostInstancesRequest,
    InstanceActionFinished, InstanceBuildFinished, InstanceTerminated, KnownInstance,
    PowerStateChange, PowerStateChanged, ProviderUpdate, RegisterRequest, Registered, Running,
    ServiceHeartbeat, ServiceRegister, Terminated, UpdateProvider,
};
use mica_rpc::{Dispatcher, Method, RemoteError, Rpc, RpcError, Server, Subscription, Topic};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::backend::{Backend, Event, Resources};
use crate::config::Config;
use crate::console::{ConsoleChannel, ConsoleError};

/// The binary name services register with.
pub const BINARY: &str = "mica-agent";

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The host name (`compute.<host>`).
    pub host: String,
    /// Between heartbeats, unless the conductor asks for another interval at
    /// registration.
    pub report_interval: Duration,
    /// Between inventory reports (changes are reported at once).
    pub resource_update_interval: Duration,
    /// Between power-state syncs.
    pub sync_power_state_interval: Duration,
    /// Between backend housekeeping runs (image cache cleanup).
    pub housekeeping_interval: Duration,
    /// Timeout of the agent's calls to the conductor.
    pub call_timeout: Duration,
    /// The console channel (none: this host serves no consoles).
    pub console: Option<ConsoleOptions>,
}

/// Where the console channel listens and what it tells the proxy.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// `address:port`.
    pub listen: String,
    /// `host:port` the proxy dials (empty: derived from `listen`).
    pub advertise: String,
    /// How long a ticket is good for.
    pub ticket_ttl: Duration,
}

impl ConsoleOptions {
    /// A channel on an ephemeral port of 127.0.0.1 (tests).
    pub fn loopback() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            advertise: String::new(),
            ticket_ttl: Duration::from_secs(30),
        }
    }
}

impl AgentOptions {
    /// Defaults for `host` (Nova's intervals).
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            report_interval: Duration::from_secs(10),
            resource_update_interval: Duration::from_secs(60),
            sync_power_state_interval: Duration::from_secs(600),
            housekeeping_interval: Duration::from_secs(2400),
            call_timeout: Duration::from_secs(30),
            console: None,
        }
    }

    /// The options a configuration file gives.
    pub fn from_config(config: &Config) -> Self {
        Self {
            host: config.host_name(),
            report_interval: Duration::from_secs(config.agent.report_interval_s),
            resource_update_interval: Duration::from_secs(config.agent.resource_update_interval_s),
            sync_power_state_interval: Duration::from_secs(
                config.agent.sync_power_state_interval_s,
            ),
            housekeeping_interval: Duration::from_secs(config.images.cleanup_interval_s.max(1)),
            call_timeout: Duration::from_secs(30),
            console: (!config.console.listen.is_empty()).then(|| ConsoleOptions {
                listen: config.console.listen.clone(),
                advertise: config.console.advertise.clone(),
                ticket_ttl: Duration::from_secs(config.console.ticket_ttl_s.max(1)),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the backend could not start: {}", .0.message)]
    Backend(Failure),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error("cannot serve compute.{host}")]
    Serve {
        host: String,
        #[source]
        source: RpcError,
    },
}

struct Shared<B> {
    rpc: Rpc,
    options: AgentOptions,
    backend: Arc<B>,
    /// Something changed what placement should see.
    resources_dirty: Notify,
    /// Set once registered.
    registered: watch::Sender<Option<Registered>>,
    /// Set when the agent stops.
    stopping: watch::Sender<bool>,
    /// The console channel, if this host serves consoles.
    console: Option<ConsoleChannel>,
}

/// A running agent. Dropping it (or [`Agent::shutdown`]) stops the service;
/// the instances keep running (their VMMs outlive the agent).
pub struct Agent {
    host: String,
    server: Option<Server>,
    stopping: watch::Sender<bool>,
    registered: watch::Receiver<Option<Registered>>,
    tasks: Vec<JoinHandle<()>>,
    dirty: Arc<dyn Fn() + Send + Sync>,
}

impl Agent {
    /// Starts `backend` (adopting what runs), serves `compute.<host>` and
    /// the compute fanout, and starts registering, heartbeats, inventory
    /// reports and power-state sync. Returns once serving; registration goes
    /// on in the background until the conductor answers.
    pub async fn start<B: Backend>(
        rpc: Rpc,
        options: AgentOptions,
        backend: Arc<B>,
    ) -> Result<Agent, AgentError> {
        let span = tracing::info_span!("agent", host = %options.host);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        backend
            .start(events_tx)
            .instrument(span.clone())
            .await
            .map_err(AgentError::Backend)?;
        let console = match &options.console {
            Some(c) => {
                let host_ip = if c.advertise.is_empty() {
                    crate::host::first_global_ipv4().await
                } else {
                    String::new()
                };
                Some(ConsoleChannel::bind(&c.listen, &c.advertise, &host_ip, c.ticket_ttl).await?)
            }
            None => None,
        };
        let (registered, registered_rx) = watch::channel(None);
        let (stopping, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            rpc: rpc.clone(),
            options: options.clone(),
            backend,
            resources_dirty: Notify::new(),
            registered,
            stopping: stopping.clone(),
            console,
        });
        let server = rpc
            .serve(
                Subscription::compute_host(&options.host),
                dispatcher(shared.clone()),
            )
            .await
            .map_err(|source| AgentError::Serve {
                host: options.host.clone(),
                source,
            })?;
        tracing::info!(host = %options.host, "serving compute.{}", options.host);
        let tasks = vec![
            tokio::spawn(service_life(shared.clone()).instrument(span.clone())),
            tokio::spawn(forward_events(shared.clone(), events_rx).instrument(span.clone())),
            tokio::spawn(power_sync_loop(shared.clone()).instrument(span.clone())),
            tokio::spawn(housekeeping_loop(shared.clone()).instrument(span)),
        ];
        let dirty_shared = shared.clone();
        Ok(Agent {
            host: options.host,
            server: Some(server),
            stopping,
            registered: registered_rx,
            tasks,
            dirty: Arc::new(move || dirty_shared.resources_dirty.notify_one()),
        })
    }

    /// The host name served.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Waits until the conductor accepted the registration.
    pub async fn registered(&self, timeout: Duration) -> Option<Registered> {
        let mut rx = self.registered.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| r.is_some()))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|r| r.clone()))
    }

    /// Reports the host's resources to placement soon.
    pub fn resources_changed(&self) {
        (self.dirty)();
    }

    /// Stops serving and every periodic task. Instances keep running.
    pub async fn shutdown(mut self) {
        let _ = self.stopping.send(true);
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stopping.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn dispatcher<B: Backend>(shared: Arc<Shared<B>>) -> Dispatcher {
    let build = shared.clone();
    let terminate = shared.clone();
    let power = shared.clone();
    let security = shared.clone();
    let console = shared.clone();
    let console_connect = shared.clone();
    let state = shared;
    Dispatcher::new(compute::VERSION)
        .handle_method::<BuildAndRunInstance>(move |_ctx, req: BuildRequest| {
            let shared = build.clone();
            async move {
                let received = Instant::now();
                let span = tracing::info_span!("build", instance = %req.instance.uuid, vmm = %req.vmm_id);
                tokio::spawn(run_build(shared, req, received).instrument(span));
                Ok::<_, RemoteError>(())
            }
        })
        .handle_method::<TerminateInstance>(move |_ctx, req: TerminateRequest| {
            let shared = terminate.clone();
            async move {
                let span = tracing::info_span!("terminate", instance = %req.instance_uuid);
                tokio::spawn(run_terminate(shared, req).instrument(span));
                Ok::<_, RemoteError>(())
            }
        })
        .handle_method::<PowerAction>(move |_ctx, req: PowerActionRequest| {
            let shared = power.clone();
            async move {
                let span = tracing::info_span!("power_action", instance = %req.instance_uuid, action = req.action.name(), request_id = %req.request_id);
                tokio::spawn(run_power_action(shared, req).instrument(span));
                Ok::<_, RemoteError>(())
            }
        })
        .handle_method::<compute::ApplyPortSecurity>(move |_ctx, req: compute::PortSecurityRequest| {
            let shared = security.clone();
            async move {
                let span = tracing::info_span!("apply_port_security", instance = %req.instance_uuid, port = %req.port_id);
                async move {
                    if let Err(f) = shared.backend.apply_port_security(&req).await {
                        tracing::error!(message = %f.message, details = %f.details, "security groups not applied");
                        return Err(RemoteError::new("port_security_failed", f.message));
                    }
                    tracing::info!("security groups applied");
                    Ok(())
                }
                .instrument(span)
                .await
            }
        })
        .handle_method::<GetConsoleOutput>(move |_ctx, req: compute::ConsoleOutputRequest| {
            let shared = console.clone();
            async move {
                shared
                    .backend
                    .console_output(&req)
                    .await
                    .map(|output| ConsoleOutput { output })
                    .map_err(|f| RemoteError::new("console_unavailable", f.message.clone()).with_data(&f))
            }
        })
        .handle_method::<ConsoleConnect>(move |_ctx, req: compute::ConsoleConnectRequest| {
            let shared = console_connect.clone();
            async move {
                let Some(channel) = &shared.console else {
                    return Err(RemoteError::new(
                        "console_disabled",
                        format!("Host {} serves no consoles (its [console] listen is empty)", shared.options.host),
                    ));
                };
                let socket = shared
                    .backend
                    .console_socket(&req.instance_uuid, req.kind)
                    .await
                    .map_err(|f| RemoteError::new("console_unavailable", f.message.clone()).with_data(&f))?;
                tracing::info!(instance = %req.instance_uuid, kind = req.kind.name(), "console ticket issued");
                Ok(channel.mint(&req.instance_uuid, req.kind, socket))
            }
        })
        .handle_method::<GetHostState>(move |_ctx, _req: compute::HostStateRequest| {
            let shared = state.clone();
            async move {
                Ok::<_, RemoteError>(HostState {
                    host: shared.options.host.clone(),
                    instances: shared.backend.instances().await,
                })
            }
        })
}

async fn run_build<B: Backend>(shared: Arc<Shared<B>>, req: BuildRequest, received: Instant) {
    tracing::info!(attempt = req.attempt, image = %req.instance.image.id, "build requested");
    let result = shared.backend.build(&req).await;
    let took_ms = received.elapsed().as_millis() as u64;
    let result = match result {
        Ok(power_state) => {
            tracing::info!(took_ms, "instance built and running");
            Ok(Running {
                power_state,
                took_ms,
            })
        }
        Err(f) => {
            tracing::error!(message = %f.message, details = %f.details, retryable = f.retryable, "build failed");
            Err(f)
        }
    };
    shared.resources_dirty.notify_one();
    let report = BuildFinished {
        instance_uuid: req.instance.uuid.clone(),
        vmm_id: req.vmm_id.clone(),
        host: shared.options.host.clone(),
        attempt: req.attempt,
        result,
    };
    report_to_conductor::<InstanceBuildFinished, B>(&shared, &report).await;
}

async fn run_terminate<B: Backend>(shared: Arc<Shared<B>>, req: TerminateRequest) {
    tracing::info!(
        shutdown_timeout_s = req.shutdown_timeout_s,
        "terminate requested"
    );
    let result = shared.backend.terminate(&req).await;
    match &result {
        Ok(()) => tracing::info!("instance terminated"),
        Err(f) => tracing::error!(message = %f.message, details = %f.details, "terminate failed"),
    }
    shared.resources_dirty.notify_one();
    let report = Terminated {
        instance_uuid: req.instance_uuid.clone(),
        host: shared.options.host.clone(),
        result,
    };
    report_to_conductor::<InstanceTerminated, B>(&shared, &report).await;
}

async fn run_power_action<B: Backend>(shared: Arc<Shared<B>>, req: PowerActionRequest) {
    tracing::info!("power action requested");
    let result = shared.backend.power_action(&req).await;
    let (vmm_id, result) = match result {
        Ok(outcome) => {
            tracing::info!(power_state = ?outcome.power_state, vmm = ?outcome.vmm_id, "power action done");
            (outcome.vmm_id, Ok(outcome.power_state))
        }
        Err(f) => {
            tracing::error!(message = %f.message, details = %f.details, "power action failed");
            let now = shared
                .backend
                .instances()
                .await
                .into_iter()
                .find(|i| i.instance_uuid == req.instance_uuid)
                .and_then(|i| i.vmm_id);
            (now, Err(f))
        }
    };
    shared.resources_dirty.notify_one();
    let report = ActionFinished {
        instance_uuid: req.instance_uuid.clone(),
        request_id: req.request_id.clone(),
        action: req.action.name().to_owned(),
        host: shared.options.host.clone(),
        vmm_id,
        result,
    };
    report_to_conductor::<InstanceActionFinished, B>(&shared, &report).await;
}

/// Casts a report, retrying for a while if the bus is away (the cast itself
/// already retries across reconnections for its publish timeout).
async fn report_to_conductor<M: Method, B: Backend>(shared: &Shared<B>, report: &M::Request) {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=5 {
        match shared
            .rpc
            .cast_method::<M>(Topic::conductor(), report)
            .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(method = M::NAME, attempt, error = %e, "cannot report to the conductor");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    tracing::error!(
        method = M::NAME,
        "report to the conductor lost after 5 attempts"
    );
}

/// Returns once the agent stops.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Sleeps `d`, or returns false at once when the agent stops.
async fn pause<B>(shared: &Shared<B>, d: Duration) -> bool {
    let mut stop = shared.stopping.subscribe();
    let already = *stop.borrow();
    if already {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stopped(&mut stop) => false,
    }
}

/// Register (until the conductor answers), then heartbeat and report the
/// host's resources for as long as the agent runs.
async fn service_life<B: Backend>(shared: Arc<Shared<B>>) {
    let host = shared.options.host.clone();
    let mut delay = Duration::from_millis(200);
    let registered = loop {
        let req = RegisterRequest {
            host: host.clone(),
            binary: BINARY.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        match shared
            .rpc
            .call_method::<ServiceRegister>(Topic::conductor(), &req, shared.options.call_timeout)
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the conductor yet; retrying");
                if !pause(&shared, delay).await {
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::info!(
        service_id = %registered.service_id,
        disabled = registered.disabled,
        report_interval_s = registered.report_interval_s,
        "registered"
    );
    if registered.disabled {
        tracing::warn!("this compute service is disabled: the scheduler sends it no new builds");
    }
    let interval = if registered.report_interval_s > 0 {
        Duration::from_secs(registered.report_interval_s)
    } else {
        shared.options.report_interval
    };
    let _ = shared.registered.send(Some(registered));
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), interval).in_current_span());
    resources_loop(&shared).await;
    heartbeat.abort();
}

async fn heartbeat_loop<B: Backend>(shared: Arc<Shared<B>>, interval: Duration) {
    let beat = Heartbeat {
        host: shared.options.host.clone(),
        binary: BINARY.into(),
    };
    loop {
        if let Err(e) = shared
            .rpc
            .cast_method::<ServiceHeartbeat>(Topic::conductor(), &beat)
            .await
        {
            tracing::warn!(error = %e, "heartbeat not sent");
        }
        if !pause(&shared, interval).await {
            return;
        }
    }
}

async fn resources_loop<B: Backend>(shared: &Shared<B>) {
    let mut last: Option<(Resources, Instant)> = None;
    let mut stop = shared.stopping.subscribe();
    loop {
        let due = match &last {
            None => true,
            Some((_, at)) => at.elapsed() >= shared.options.resource_update_interval,
        };
        match shared.backend.resources().await {
            Ok(now) => {
                let changed = last.as_ref().is_none_or(|(r, _)| *r != now);
                if changed || due {
                    let update = ProviderUpdate {
                        host: shared.options.host.clone(),
                        inventories: now.inventories.clone(),
                        traits: now.traits.clone(),
                        hypervisor: now.hypervisor.clone(),
                    };
                    match shared
                        .rpc
                        .call_method::<UpdateProvider>(
                            Topic::conductor(),
                            &update,
                            shared.options.call_timeout,
                        )
                        .await
                    {
                        Ok(done) => {
                            tracing::debug!(provider = %done.provider_uuid, generation = done.generation, "resources reported");
                            last = Some((now, Instant::now()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot report resources; retrying soon");
                            if !pause(shared, Duration::from_secs(5)).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            }
            Err(f) => {
                tracing::warn!(message = %f.message, details = %f.details, "cannot read the host's resources")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.options.resource_update_interval) => {}
            _ = shared.resources_dirty.notified() => {
                // Let a burst of changes settle into one report.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = stopped(&mut stop) => return,
        }
    }
}

async fn forward_events<B: Backend>(
    shared: Arc<Shared<B>>,
    mut events: mpsc::UnboundedReceiver<Event>,
) {
    while let Some(event) = events.recv().await {
        match event {
            Event::BuildAborted {
                instance_uuid,
                vmm_id,
                attempt,
                failure,
            } => {
                tracing::warn!(instance = %instance_uuid, vmm = %vmm_id, message = %failure.message, "build interrupted by an agent restart: reported failed");
                shared.resources_dirty.notify_one();
                let report = BuildFinished {
                    instance_uuid,
                    vmm_id,
                    host: shared.options.host.clone(),
                    attempt,
                    result: Err(failure),
                };
                report_to_conductor::<InstanceBuildFinished, B>(&shared, &report).await;
            }
            Event::PowerState {
                instance_uuid,
                vmm_id,
                power_state,
            } => {
                tracing::info!(instance = %instance_uuid, vmm = ?vmm_id, ?power_state, "power state changed by itself");
                shared.resources_dirty.notify_one();
                let change = PowerStateChange {
                    instance_uuid,
                    host: shared.options.host.clone(),
                    vmm_id,
                    power_state,
                };
                report_to_conductor::<PowerStateChanged, B>(&shared, &change).await;
            }
        }
    }
}

async fn power_sync_loop<B: Backend>(shared: Arc<Shared<B>>) {
    // Only once registered: the conductor knows nothing of us before.
    let mut registered = shared.registered.subscribe();
    let mut stop = shared.stopping.subscribe();
    tokio::select! {
        _ = async { let _ = registered.wait_for(|r| r.is_some()).await; } => {}
        _ = stopped(&mut stop) => return,
    }
    loop {
        if !pause(&shared, shared.options.sync_power_state_interval).await {
            return;
        }
        if let Err(e) = sync_power_states(&shared).await {
            tracing::warn!(error = %e, "power-state sync skipped");
        }
    }
}

async fn sync_power_states<B: Backend>(shared: &Shared<B>) -> Result<(), RpcError> {
    let known = shared
        .rpc
        .call_method::<HostInstances>(
            Topic::conductor(),
            &HostInstancesRequest {
                host: shared.options.host.clone(),
            },
            shared.options.call_timeout,
        )
        .await?;
    let local = shared.backend.instances().await;
    let (changes, strangers) = power_state_differences(&shared.options.host, &known, &local);
    for uuid in strangers {
        tracing::warn!(instance = %uuid, "runs on this host but the database does not place it here (left alone)");
    }
    for change in changes {
        tracing::info!(instance = %change.instance_uuid, vmm = ?change.vmm_id, power_state = ?change.power_state, "power state differs from the database");
        report_to_conductor::<PowerStateChanged, B>(shared, &change).await;
    }
    Ok(())
}

/// Compares what the database believes (`known`) with what runs (`local`):
/// the changes to report, and the instances that run here unknown to the
/// database. Instances with a task in progress are skipped (the task will
/// report), as Nova does; an instance the host does not have at all is
/// reported as `NoState`.
pub fn power_state_differences(
    host: &str,
    known: &[KnownInstance],
    local: &[HostInstance],
) -> (Vec<PowerStateChange>, Vec<String>) {
    let local_by_uuid: HashMap<&str, &HostInstance> = local
        .iter()
        .map(|i| (i.instance_uuid.as_str(), i))
        .collect();
    let mut changes = Vec::new();
    for k in known {
        if k.task_state.is_some() {
            continue;
        }
        let (vmm_id, observed) = match local_by_uuid.get(k.instance_uuid.as_str()) {
            Some(l) => (l.vmm_id.clone(), l.power_state),
            None => (None, PowerState::NoState),
        };
        if observed != k.power_state {
            changes.push(PowerStateChange {
                instance_uuid: k.instance_uuid.clone(),
                host: host.to_owned(),
                vmm_id,
                power_state: observed,
            });
        }
    }
    let known_uuids: std::collections::HashSet<&str> =
        known.iter().map(|k| k.instance_uuid.as_str()).collect();
    let strangers = local
        .iter()
        .filter(|l| !known_uuids.contains(l.instance_uuid.as_str()))
        .map(|l| l.instance_uuid.clone())
        .collect();
    (changes, strangers)
}

async fn housekeeping_loop<B: Backend>(shared: Arc<Shared<B>>) {
    loop {
        if !pause(&shared, shared.options.housekeeping_interval).await {
            return;
        }
        shared.backend.housekeeping().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(uuid: &str, state: PowerState, task: Option<&str>) -> KnownInstance {
        KnownInstance {
            instance_uuid: uuid.into(),
            vmm_id: Some(format!("v-{uuid}")),
            vm_state: "active".into(),
            task_state: task.map(Into::into),
            power_state: state,
        }
    }

    fn local(uuid: &str, state: PowerState) -> HostInstance {
        HostInstance {
            instance_uuid: uuid.into(),
            vmm_id: (state != PowerState::Shutdown).then(|| format!("v-{uuid}")),
            power_state: state,
        }
    }

    #[test]
    fn sync_reports_only_differences_and_skips_busy_instances() {
        let known = vec![
            known("same", PowerState::Running, None),
            known("died", PowerState::Running, None),
            known("busy", PowerState::Running, Some("powering-off")),
            known("gone", PowerState::Running, None),
            known("paused", PowerState::Running, None),
        ];
        let local = vec![
            local("same", PowerState::Running),
            local("died", PowerState::Shutdown),
            local("busy", PowerState::Shutdown),
            local("paused", PowerState::Paused),
            local("stranger", PowerState::Running),
        ];
        let (changes, strangers) = power_state_differences("h", &known, &local);
        let summary: Vec<(&str, PowerState, Option<&str>)> = changes
            .iter()
            .map(|c| (c.instance_uuid.as_str(), c.power_state, c.vmm_id.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                ("died", PowerState::Shutdown, None),
                ("gone", PowerState::NoState, None),
                ("paused", PowerState::Paused, Some("v-paused")),
            ]
        );
        assert!(changes.iter().all(|c| c.host == "h"));
        assert_eq!(strangers, ["stranger"]);
    }
}
