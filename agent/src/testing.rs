//! A stand-in for the conductor's side of the agent interface, for tests and
//! benchmarks of agents (real or simulated): it serves the `conductor` topic
//! with mica-rpc, answers registrations, inventory updates and power-sync
//! queries as the conductor would, keeps a small "database" of instances
//! updated from the agents' reports (as the conductor would), and records
//! every report so a test can wait for the one it expects.
//!
//! It is a test aid: the real conductor lives in the controller.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mica_rpc::compute::{
    self, BuildAndRunInstance, BuildRequest, InstanceSpec, PowerAction, PowerActionRequest,
    PowerState, TerminateInstance, TerminateRequest,
};
use mica_rpc::conductor::{
    self, ActionFinished, BuildFinished, Heartbeat, HostInstances, HostInstancesRequest,
    InstanceActionFinished, InstanceBuildFinished, InstanceTerminated, KnownInstance,
    PowerStateChange, PowerStateChanged, ProviderUpdate, ProviderUpdated, RegisterRequest,
    Registered, ServiceHeartbeat, ServiceRegister, Terminated, UpdateProvider,
};
use mica_rpc::{Dispatcher, RemoteError, Rpc, RpcError, Server, Subscription, Topic};
use tokio::sync::broadcast;

/// Everything an agent told the conductor.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Registered(RegisterRequest),
    Heartbeat(Heartbeat),
    Provider(ProviderUpdate),
    Built(BuildFinished),
    Action(ActionFinished),
    Terminated(Terminated),
    PowerState(PowerStateChange),
}

/// What the fake database holds of an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct DbInstance {
    pub host: String,
    pub vmm_id: Option<String>,
    pub vm_state: String,
    pub task_state: Option<String>,
    pub power_state: PowerState,
}

#[derive(Default)]
struct State {
    reports: Vec<Report>,
    instances: BTreeMap<String, DbInstance>,
    heartbeats: HashMap<String, u64>,
    providers: HashMap<String, ProviderUpdate>,
    disabled: HashMap<String, bool>,
    generation: u64,
}

/// See the module docs.
pub struct FakeConductor {
    rpc: Rpc,
    state: Arc<Mutex<State>>,
    reports: broadcast::Sender<Report>,
    server: Option<Server>,
}

impl FakeConductor {
    /// Serves the conductor topic on `rpc`.
    pub async fn serve(rpc: &Rpc) -> Result<FakeConductor, RpcError> {
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, _) = broadcast::channel(4096);
        let record = {
            let state = state.clone();
            let tx = tx.clone();
            move |r: Report| {
                state.lock().expect("state").reports.push(r.clone());
                let _ = tx.send(r);
            }
        };
        let (s1, s2, s3, s4, s5, s6, s7) = (
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
        );
        let (r1, r2, r3, r4, r5, r6, r7) = (
            record.clone(),
            record.clone(),
            record.clone(),
            record.clone(),
            record.clone(),
            record.clone(),
            record,
        );
        let dispatcher = Dispatcher::new(conductor::VERSION)
            .handle_method::<ServiceRegister>(move |_ctx, req: RegisterRequest| {
                let (state, record) = (s1.clone(), r1.clone());
                async move {
                    let disabled = *state
                        .lock()
                        .expect("state")
                        .disabled
                        .get(&req.host)
                        .unwrap_or(&false);
                    let id = format!("service-{}", req.host);
                    record(Report::Registered(req));
                    Ok::<_, RemoteError>(Registered {
                        service_id: id,
                        report_interval_s: 1,
                        disabled,
                    })
                }
            })
            .handle_method::<ServiceHeartbeat>(move |_ctx, req: Heartbeat| {
                let (state, record) = (s2.clone(), r2.clone());
                async move {
                    *state
                        .lock()
                        .expect("state")
                        .heartbeats
                        .entry(req.host.clone())
                        .or_default() += 1;
                    record(Report::Heartbeat(req));
                    Ok::<_, RemoteError>(())
                }
            })
            .handle_method::<UpdateProvider>(move |_ctx, req: ProviderUpdate| {
                let (state, record) = (s3.clone(), r3.clone());
                async move {
                    let generation = {
                        let mut st = state.lock().expect("state");
                        st.generation += 1;
                        st.providers.insert(req.host.clone(), req.clone());
                        st.generation
                    };
                    let uuid = format!("rp-{}", req.host);
                    record(Report::Provider(req));
                    Ok::<_, RemoteError>(ProviderUpdated {
                        provider_uuid: uuid,
                        generation,
                    })
                }
            })
            .handle_method::<InstanceBuildFinished>(move |_ctx, req: BuildFinished| {
                let (state, record) = (s4.clone(), r4.clone());
                async move {
                    {
                        let mut st = state.lock().expect("state");
                        let entry = st.instances.entry(req.instance_uuid.clone());
                        let i = entry.or_insert_with(|| DbInstance {
                            host: req.host.clone(),
                            vmm_id: None,
                            vm_state: "building".into(),
                            task_state: Some("spawning".into()),
                            power_state: PowerState::NoState,
                        });
                        i.host = req.host.clone();
                        i.task_state = None;
                        match &req.result {
                            Ok(r) => {
                                i.vmm_id = Some(req.vmm_id.clone());
                                i.vm_state = "active".into();
                                i.power_state = r.power_state;
                            }
                            Err(_) => {
                                i.vm_state = "error".into();
                                i.power_state = PowerState::NoState;
                            }
                        }
                    }
                    record(Report::Built(req));
                    Ok::<_, RemoteError>(())
                }
            })
            .handle_method::<InstanceActionFinished>(move |_ctx, req: ActionFinished| {
                let (state, record) = (s5.clone(), r5.clone());
                async move {
                    {
                        let mut st = state.lock().expect("state");
                        if let Some(i) = st.instances.get_mut(&req.instance_uuid) {
                            i.task_state = None;
                            if let Ok(p) = req.result {
                                i.power_state = p;
                                i.vmm_id = req.vmm_id.clone();
                                i.vm_state = vm_state_of(p).into();
                            }
                        }
                    }
                    record(Report::Action(req));
                    Ok::<_, RemoteError>(())
                }
            })
            .handle_method::<InstanceTerminated>(move |_ctx, req: Terminated| {
                let (state, record) = (s6.clone(), r6.clone());
                async move {
                    if req.result.is_ok() {
                        state
                            .lock()
                            .expect("state")
                            .instances
                            .remove(&req.instance_uuid);
                    }
                    record(Report::Terminated(req));
                    Ok::<_, RemoteError>(())
                }
            })
            .handle_method::<HostInstances>(move |_ctx, req: HostInstancesRequest| {
                let state = s7.clone();
                async move {
                    let st = state.lock().expect("state");
                    Ok::<_, RemoteError>(
                        st.instances
                            .iter()
                            .filter(|(_, i)| i.host == req.host)
                            .map(|(uuid, i)| KnownInstance {
                                instance_uuid: uuid.clone(),
                                vmm_id: i.vmm_id.clone(),
                                vm_state: i.vm_state.clone(),
                                task_state: i.task_state.clone(),
                                power_state: i.power_state,
                            })
                            .collect::<Vec<_>>(),
                    )
                }
            })
            .handle_method::<PowerStateChanged>({
                let state = state.clone();
                let record = r7;
                move |_ctx, req: PowerStateChange| {
                    let (state, record) = (state.clone(), record.clone());
                    async move {
                        {
                            let mut st = state.lock().expect("state");
                            if let Some(i) = st.instances.get_mut(&req.instance_uuid) {
                                i.power_state = req.power_state;
                                if req.power_state == PowerState::Shutdown {
                                    // Nova's _sync_instance_power_state: an
                                    // active instance found shut down is
                                    // stopped, not restarted.
                                    i.vm_state = "stopped".into();
                                    i.vmm_id = None;
                                }
                            }
                        }
                        record(Report::PowerState(req));
                        Ok::<_, RemoteError>(())
                    }
                }
            });
        let server = rpc
            .serve([Subscription::Topic(Topic::conductor())], dispatcher)
            .await?;
        Ok(FakeConductor {
            rpc: rpc.clone(),
            state,
            reports: tx,
            server: Some(server),
        })
    }

    /// Subscribes to the reports that come from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Report> {
        self.reports.subscribe()
    }

    /// Every report so far.
    pub fn reports(&self) -> Vec<Report> {
        self.state.lock().expect("state").reports.clone()
    }

    /// Waits for a report (already received, or to come) that `pred` accepts.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Report) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.subscribe();
        if let Some(t) = self.reports().iter().find_map(&mut pred) {
            return Some(t);
        }
        tokio::time::timeout(timeout, async {
            loop {
                match rx.recv().await {
                    Ok(r) => {
                        if let Some(t) = pred(&r) {
                            return Some(t);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(t) = self.reports().iter().find_map(&mut pred) {
                            return Some(t);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Waits for the build report of `(instance, vmm)`.
    pub async fn wait_built(
        &self,
        instance: &str,
        vmm_id: &str,
        timeout: Duration,
    ) -> Option<BuildFinished> {
        self.wait_for(timeout, |r| match r {
            Report::Built(b) if b.instance_uuid == instance && b.vmm_id == vmm_id => {
                Some(b.clone())
            }
            _ => None,
        })
        .await
    }

    /// Waits for the report of the power action `request_id`.
    pub async fn wait_action(&self, request_id: &str, timeout: Duration) -> Option<ActionFinished> {
        self.wait_for(timeout, |r| match r {
            Report::Action(a) if a.request_id == request_id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the terminate report of `instance`.
    pub async fn wait_terminated(&self, instance: &str, timeout: Duration) -> Option<Terminated> {
        self.wait_for(timeout, |r| match r {
            Report::Terminated(t) if t.instance_uuid == instance => Some(t.clone()),
            _ => None,
        })
        .await
    }

    /// The fake database's view of an instance.
    pub fn instance(&self, uuid: &str) -> Option<DbInstance> {
        self.state
            .lock()
            .expect("state")
            .instances
            .get(uuid)
            .cloned()
    }

    /// Puts an instance in the database as active on `host` with
    /// `power_state` (for power-sync tests).
    pub fn set_instance(&self, uuid: &str, host: &str, power_state: PowerState) {
        self.state.lock().expect("state").instances.insert(
            uuid.to_owned(),
            DbInstance {
                host: host.to_owned(),
                vmm_id: None,
                vm_state: "active".into(),
                task_state: None,
                power_state,
            },
        );
    }

    /// Heartbeats received from `host`.
    pub fn heartbeats(&self, host: &str) -> u64 {
        *self
            .state
            .lock()
            .expect("state")
            .heartbeats
            .get(host)
            .unwrap_or(&0)
    }

    /// The last provider update of `host`.
    pub fn provider(&self, host: &str) -> Option<ProviderUpdate> {
        self.state
            .lock()
            .expect("state")
            .providers
            .get(host)
            .cloned()
    }

    /// Marks a host's service disabled (its next registration says so).
    pub fn disable(&self, host: &str) {
        self.state
            .lock()
            .expect("state")
            .disabled
            .insert(host.to_owned(), true);
    }

    /// Records a build in the database (as the conductor does before it
    /// casts it) and casts it to `host`.
    pub async fn build(
        &self,
        host: &str,
        instance: InstanceSpec,
        vmm_id: &str,
    ) -> Result<(), RpcError> {
        self.state.lock().expect("state").instances.insert(
            instance.uuid.clone(),
            DbInstance {
                host: host.to_owned(),
                vmm_id: None,
                vm_state: "building".into(),
                task_state: Some("spawning".into()),
                power_state: PowerState::NoState,
            },
        );
        let req = BuildRequest {
            instance,
            vmm_id: vmm_id.to_owned(),
            attempt: 1,
        };
        self.rpc
            .cast_method::<BuildAndRunInstance>(Topic::compute(host), &req)
            .await
    }

    /// Casts a power action (setting the task state meanwhile, as the
    /// conductor does).
    pub async fn power(
        &self,
        host: &str,
        instance_uuid: &str,
        request_id: &str,
        action: compute::Action,
    ) -> Result<(), RpcError> {
        if let Some(i) = self
            .state
            .lock()
            .expect("state")
            .instances
            .get_mut(instance_uuid)
        {
            i.task_state = Some(action.name().to_owned());
        }
        let req = PowerActionRequest {
            instance_uuid: instance_uuid.to_owned(),
            request_id: request_id.to_owned(),
            action,
        };
        self.rpc
            .cast_method::<PowerAction>(Topic::compute(host), &req)
            .await
    }

    /// Casts a terminate.
    pub async fn terminate(
        &self,
        host: &str,
        instance_uuid: &str,
        shutdown_timeout_s: u64,
    ) -> Result<(), RpcError> {
        let req = TerminateRequest {
            instance_uuid: instance_uuid.to_owned(),
            shutdown_timeout_s,
        };
        self.rpc
            .cast_method::<TerminateInstance>(Topic::compute(host), &req)
            .await
    }

    /// Stops serving.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// Nova's `vm_state` for a power state reached by an action.
fn vm_state_of(p: PowerState) -> &'static str {
    match p {
        PowerState::Running => "active",
        PowerState::Paused => "paused",
        PowerState::Suspended => "suspended",
        PowerState::Shutdown | PowerState::Crashed => "stopped",
        PowerState::NoState => "error",
    }
}

/// A minimal instance for tests: `flavor` vCPUs/MB/GB, no ports.
pub fn instance_spec(
    uuid: &str,
    image: compute::ImageSpec,
    vcpus: u32,
    memory_mb: u64,
    root_gb: u64,
) -> InstanceSpec {
    InstanceSpec {
        uuid: uuid.to_owned(),
        name: format!("vm-{}", &uuid[..8.min(uuid.len())]),
        hostname: format!("vm-{}", &uuid[..8.min(uuid.len())]),
        project_id: "project".into(),
        user_id: "user".into(),
        flavor: compute::FlavorSpec {
            id: "flavor".into(),
            name: "test".into(),
            vcpus,
            memory_mb,
            root_gb,
            ephemeral_gb: 0,
            swap_mb: 0,
            extra_specs: Default::default(),
        },
        image,
        ports: vec![],
        key_data: None,
        user_data: None,
        metadata: Default::default(),
        availability_zone: None,
        launch_index: 0,
    }
}

/// A new random uuid.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}
