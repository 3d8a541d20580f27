//! The simulated backend: pretend instances, so the controller (scheduler,
//! conductor, placement) can be tested with hundreds of hosts and no KVM.
//!
//! It keeps the same rules as the real backend where the conductor can see
//! them: operations are idempotent, a build's VMM id is the instance's VMM, a
//! stopped instance has no VMM, a start or hard reboot runs the VMM id the
//! request names, and an action the instance's state does not allow fails.
//! Builds take `build_delay_ms` (± `build_jitter_ms`) and fail with
//! probability `failure_rate`, as a host problem (retryable). Tests can crash
//! an instance ([`SimulatedBackend::crash`]) to exercise power-state sync.
//!
//! Many agents run in one process with [`spawn_fleet`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mica_rpc::Rpc;
use mica_rpc::compute::{
    Action, BuildRequest, ConsoleKind, ConsoleOutputRequest, HostInstance, PortSecurityRequest,
    PowerActionRequest, PowerState, TerminateRequest,
};
use mica_rpc::conductor::{Failure, HypervisorInfo, Inventory};

use crate::backend::{
    ActionOutcome, Backend, Event, EventSender, Resources, failure, host_failure,
};
use crate::config::{ResourcesSection, SimulatedSection};
use crate::service::{Agent, AgentError, AgentOptions};

#[derive(Debug, Clone)]
struct SimInstance {
    vmm_id: Option<String>,
    power_state: PowerState,
    hostname: String,
    vcpus: u32,
    ports: Vec<String>,
    boots: u32,
}

/// See the module docs.
pub struct SimulatedBackend {
    host: String,
    sim: SimulatedSection,
    resources: ResourcesSection,
    instances: Mutex<HashMap<String, SimInstance>>,
    /// Serializes the operations on one instance.
    locks: crate::locks::KeyedLocks,
    events: Mutex<Option<EventSender>>,
    rng: Mutex<fastrand::Rng>,
    /// Console sockets tests stand up for this pretend host, by kind.
    console_sockets: Mutex<HashMap<ConsoleKind, PathBuf>>,
    console_requests: AtomicUsize,
}

impl SimulatedBackend {
    pub fn new(
        host: impl Into<String>,
        sim: SimulatedSection,
        resources: ResourcesSection,
    ) -> Self {
        Self {
            host: host.into(),
            sim,
            resources,
            instances: Mutex::new(HashMap::new()),
            locks: Default::default(),
            events: Mutex::new(None),
            rng: Mutex::new(fastrand::Rng::new()),
            console_sockets: Mutex::new(HashMap::new()),
            console_requests: AtomicUsize::new(0),
        }
    }

    /// Serves `kind` consoles of every running instance on this pretend
    /// host from `socket` (a Unix listener the test stands up). Without
    /// one, the host answers that the instance has no such console.
    pub fn set_console_socket(&self, kind: ConsoleKind, socket: PathBuf) {
        self.console_sockets
            .lock()
            .expect("console sockets")
            .insert(kind, socket);
    }

    /// How many console connections were asked of this host.
    pub fn console_requests(&self) -> usize {
        self.console_requests.load(Ordering::SeqCst)
    }

    /// Makes a running instance's pretend VMM die, as `kill -9` would: the
    /// instance becomes SHUTOFF and the agent reports it.
    pub fn crash(&self, instance_uuid: &str) -> bool {
        {
            let mut all = self.instances.lock().expect("instances");
            let Some(i) = all.get_mut(instance_uuid) else {
                return false;
            };
            if i.vmm_id.is_none() {
                return false;
            }
            i.power_state = PowerState::Shutdown;
            i.vmm_id = None;
        }
        self.emit(Event::PowerState {
            instance_uuid: instance_uuid.to_owned(),
            vmm_id: None,
            power_state: PowerState::Shutdown,
        });
        true
    }

    /// The ids of the ports an instance on this pretend host was built
    /// with (`None`: no such instance here).
    pub fn ports_of(&self, instance_uuid: &str) -> Option<Vec<String>> {
        self.instances
            .lock()
            .expect("instances")
            .get(instance_uuid)
            .map(|i| i.ports.clone())
    }

    /// The number of instances on this pretend host.
    pub fn instance_count(&self) -> usize {
        self.instances.lock().expect("instances").len()
    }

    fn emit(&self, event: Event) {
        if let Some(tx) = self.events.lock().expect("events").as_ref() {
            let _ = tx.send(event);
        }
    }

    async fn delay(&self, base_ms: u64, jitter_ms: u64) {
        let ms = if jitter_ms == 0 {
            base_ms
        } else {
            let j = self.rng.lock().expect("rng").u64(0..=2 * jitter_ms);
            (base_ms + j).saturating_sub(jitter_ms)
        };
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

impl Backend for SimulatedBackend {
    async fn start(&self, events: EventSender) -> Result<(), Failure> {
        *self.events.lock().expect("events") = Some(events);
        Ok(())
    }

    async fn resources(&self) -> Result<Resources, Failure> {
        let r = &self.resources;
        let mut inventories = BTreeMap::new();
        let inv = |total: u64, reserved: u64, ratio: f64| Inventory {
            total,
            reserved: reserved.min(total),
            min_unit: 1,
            max_unit: total.max(1),
            step_size: 1,
            allocation_ratio: ratio,
        };
        inventories.insert(
            "VCPU".into(),
            inv(self.sim.vcpus, r.reserved_host_cpus, r.cpu_allocation_ratio),
        );
        inventories.insert(
            "MEMORY_MB".into(),
            inv(
                self.sim.memory_mb,
                r.reserved_host_memory_mb,
                r.ram_allocation_ratio,
            ),
        );
        inventories.insert(
            "DISK_GB".into(),
            inv(
                self.sim.disk_gb,
                r.reserved_host_disk_mb.div_ceil(1024),
                r.disk_allocation_ratio,
            ),
        );
        let running = self
            .instances
            .lock()
            .expect("instances")
            .values()
            .filter(|i| i.vmm_id.is_some())
            .count() as u32;
        Ok(Resources {
            inventories,
            traits: vec![
                "COMPUTE_ARCH_X86_64".into(),
                "COMPUTE_IMAGE_TYPE_QCOW2".into(),
                "COMPUTE_IMAGE_TYPE_RAW".into(),
                "COMPUTE_NET_VIF_MODEL_VIRTIO".into(),
                "HW_CPU_X86_AVX2".into(),
                "HW_CPU_X86_SSE42".into(),
            ],
            hypervisor: HypervisorInfo {
                hypervisor_type: "mica-simulated".into(),
                hypervisor_version: 1,
                host_ip: "127.0.0.1".into(),
                cpu_model: "simulated".into(),
                running_vms: running,
            },
        })
    }

    async fn build(&self, req: &BuildRequest) -> Result<PowerState, Failure> {
        let uuid = &req.instance.uuid;
        let _guard = self.locks.lock(uuid).await;
        if let Some(i) = self.instances.lock().expect("instances").get(uuid)
            && i.vmm_id.as_deref() == Some(req.vmm_id.as_str())
        {
            return Ok(i.power_state);
        }
        self.delay(self.sim.build_delay_ms, self.sim.build_jitter_ms)
            .await;
        let fail = {
            let mut rng = self.rng.lock().expect("rng");
            self.sim.failure_rate > 0.0 && rng.f64() < self.sim.failure_rate
        };
        if fail {
            self.instances.lock().expect("instances").remove(uuid);
            return Err(host_failure(
                "Build of instance failed on the simulated host",
                format!(
                    "{}: simulated failure (failure_rate {})",
                    self.host, self.sim.failure_rate
                ),
            ));
        }
        self.instances.lock().expect("instances").insert(
            uuid.clone(),
            SimInstance {
                vmm_id: Some(req.vmm_id.clone()),
                power_state: PowerState::Running,
                hostname: req.instance.hostname.clone(),
                vcpus: req.instance.flavor.vcpus,
                ports: req.instance.ports.iter().map(|p| p.id.clone()).collect(),
                boots: 1,
            },
        );
        Ok(PowerState::Running)
    }

    async fn terminate(&self, req: &TerminateRequest) -> Result<(), Failure> {
        let _guard = self.locks.lock(&req.instance_uuid).await;
        if self
            .instances
            .lock()
            .expect("instances")
            .contains_key(&req.instance_uuid)
        {
            self.delay(self.sim.action_delay_ms, 0).await;
        }
        self.instances
            .lock()
            .expect("instances")
            .remove(&req.instance_uuid);
        Ok(())
    }

    async fn power_action(&self, req: &PowerActionRequest) -> Result<ActionOutcome, Failure> {
        let _guard = self.locks.lock(&req.instance_uuid).await;
        self.delay(self.sim.action_delay_ms, 0).await;
        let mut all = self.instances.lock().expect("instances");
        let Some(i) = all.get_mut(&req.instance_uuid) else {
            return Err(failure(
                format!(
                    "Instance {} is not on host {}",
                    req.instance_uuid, self.host
                ),
                String::new(),
            ));
        };
        let conflict = |what: &str, i: &SimInstance| {
            Err(failure(
                format!(
                    "Cannot {what} an instance whose power state is {:?}",
                    i.power_state
                ),
                String::new(),
            ))
        };
        match &req.action {
            Action::Stop { .. } => {
                i.vmm_id = None;
                i.power_state = PowerState::Shutdown;
            }
            Action::Start { vmm_id } => match i.power_state {
                PowerState::Shutdown | PowerState::Crashed | PowerState::NoState => {
                    i.vmm_id = Some(vmm_id.clone());
                    i.power_state = PowerState::Running;
                    i.boots += 1;
                }
                PowerState::Running if i.vmm_id.as_deref() == Some(vmm_id.as_str()) => {}
                _ => return conflict("start", i),
            },
            Action::Reboot { hard, vmm_id, .. } => match (i.power_state, hard) {
                (PowerState::Running, false) => i.boots += 1,
                (_, true) => {
                    i.vmm_id = Some(vmm_id.clone());
                    i.power_state = PowerState::Running;
                    i.boots += 1;
                }
                _ => return conflict("reboot", i),
            },
            Action::Pause => match i.power_state {
                PowerState::Running | PowerState::Paused => i.power_state = PowerState::Paused,
                _ => return conflict("pause", i),
            },
            Action::Suspend => match i.power_state {
                PowerState::Running | PowerState::Suspended => {
                    i.power_state = PowerState::Suspended
                }
                _ => return conflict("suspend", i),
            },
            Action::Unpause | Action::Resume => match i.power_state {
                PowerState::Paused | PowerState::Suspended | PowerState::Running => {
                    i.power_state = PowerState::Running
                }
                _ => return conflict(req.action.name(), i),
            },
        }
        Ok(ActionOutcome {
            vmm_id: i.vmm_id.clone(),
            power_state: i.power_state,
        })
    }

    async fn apply_port_security(&self, req: &PortSecurityRequest) -> Result<(), Failure> {
        let all = self.instances.lock().expect("instances");
        match all.get(&req.instance_uuid) {
            Some(i) if i.ports.contains(&req.port_id) => Ok(()),
            _ => Err(failure(
                format!(
                    "Port {} of instance {} is not on host {}",
                    req.port_id, req.instance_uuid, self.host
                ),
                String::new(),
            )),
        }
    }

    async fn console_socket(
        &self,
        instance_uuid: &str,
        kind: ConsoleKind,
    ) -> Result<PathBuf, Failure> {
        self.console_requests.fetch_add(1, Ordering::SeqCst);
        let running = match self.instances.lock().expect("instances").get(instance_uuid) {
            None => {
                return Err(failure(
                    format!("Instance {instance_uuid} is not on host {}", self.host),
                    String::new(),
                ));
            }
            Some(i) => i.vmm_id.is_some(),
        };
        if !running {
            return Err(failure(
                format!("Instance {instance_uuid} is not running"),
                String::new(),
            ));
        }
        self.console_sockets
            .lock()
            .expect("console sockets")
            .get(&kind)
            .cloned()
            .ok_or_else(|| {
                failure(
                    match kind {
                        ConsoleKind::Vnc => {
                            "This instance has no VNC console (its VMM serves no display)"
                        }
                        ConsoleKind::Serial => "This instance has no serial console socket",
                    },
                    String::new(),
                )
            })
    }

    async fn console_output(&self, req: &ConsoleOutputRequest) -> Result<String, Failure> {
        let all = self.instances.lock().expect("instances");
        let Some(i) = all.get(&req.instance_uuid) else {
            return Err(failure(
                format!(
                    "Instance {} is not on host {}",
                    req.instance_uuid, self.host
                ),
                String::new(),
            ));
        };
        let mut lines = Vec::new();
        for boot in 1..=i.boots {
            lines.push(format!("[simulated] boot {boot} of {}", i.hostname));
            lines.push(format!(
                "=== Mica simulated guest: hostname={} cpus={} ===",
                i.hostname, i.vcpus
            ));
        }
        let keep = req.length.map_or(lines.len(), |n| n as usize);
        let start = lines.len().saturating_sub(keep);
        Ok(lines[start..].join("\n") + "\n")
    }

    async fn instances(&self) -> Vec<HostInstance> {
        let all = self.instances.lock().expect("instances");
        let mut list: Vec<HostInstance> = all
            .iter()
            .map(|(uuid, i)| HostInstance {
                instance_uuid: uuid.clone(),
                vmm_id: i.vmm_id.clone(),
                power_state: i.power_state,
            })
            .collect();
        list.sort_by(|a, b| a.instance_uuid.cmp(&b.instance_uuid));
        list
    }

    async fn housekeeping(&self) {}
}

/// One simulated agent of a fleet.
pub struct SimulatedAgent {
    pub agent: Agent,
    pub backend: Arc<SimulatedBackend>,
}

/// Starts `count` simulated agents on `rpc`, named `<prefix>-0` …
/// `<prefix>-<count-1>`, each with `sim` as its pretend host. `options`
/// gives the intervals (its host name is replaced).
pub async fn spawn_fleet(
    rpc: &Rpc,
    count: usize,
    prefix: &str,
    sim: &SimulatedSection,
    resources: &ResourcesSection,
    options: &AgentOptions,
) -> Result<Vec<SimulatedAgent>, AgentError> {
    let mut fleet = Vec::with_capacity(count);
    for n in 0..count {
        let host = format!("{prefix}-{n}");
        let backend = Arc::new(SimulatedBackend::new(&host, sim.clone(), resources.clone()));
        let mut opts = options.clone();
        opts.host = host;
        let agent = Agent::start(rpc.clone(), opts, backend.clone()).await?;
        fleet.push(SimulatedAgent { agent, backend });
    }
    Ok(fleet)
}
