//! The conductor interface for compute agents, on the topic `conductor`.
//!
//! Interface version 1.0, with two kinds of callers:
//!
//! - **The API** hands over work it accepted: new instances to schedule and
//!   build, and instance actions whose state it checked (the conductor reads
//!   the details from the database it shares with the API).
//! - **Agents**, which never touch the database: they register, heartbeat,
//!   report their resources, and report the outcome of what [`crate::compute`]
//!   asked of them. Reports carry the VMM id they are about, so a late report
//!   about an older VMM incarnation cannot roll an instance's state back.
//!
//! | method | caller | kind |
//! |---|---|---|
//! | [`ScheduleAndBuild`] | API | cast |
//! | [`RunInstanceAction`] | API | cast |
//!
//! | method | kind |
//! |---|---|
//! | [`ServiceRegister`] | call |
//! | [`ServiceHeartbeat`] | cast |
//! | [`UpdateProvider`] | call |
//! | [`InstanceBuildFinished`] | cast |
//! | [`InstanceActionFinished`] | cast |
//! | [`InstanceTerminated`] | cast |
//! | [`HostInstances`] | call |
//! | [`PowerStateChanged`] | cast |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compute::PowerState;
use crate::{Method, Version};

/// The version of this interface the conductor serves.
pub const VERSION: Version = Version::new(1, 0);

/// The API created these instances (`vm_state` building, `task_state`
/// scheduling): schedule them as one request (a multi-create shares one
/// scheduling decision loop) and build each. Nova's
/// `schedule_and_build_instances`.
pub struct ScheduleAndBuild;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleAndBuildRequest {
    /// The API request's id (`x-openstack-request-id`), for the instance actions.
    pub request_id: String,
    pub instance_uuids: Vec<String>,
}

impl Method for ScheduleAndBuild {
    const NAME: &'static str = "schedule_and_build";
    type Request = ScheduleAndBuildRequest;
    type Response = ();
}

/// An action on an existing instance, accepted by the API after its state
/// check (the API already set the `task_state` and recorded the instance
/// action).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum InstanceAction {
    Stop,
    Start,
    Reboot { hard: bool },
    Pause,
    Unpause,
    Suspend,
    Resume,
    Delete,
}

/// Route an accepted instance action to the instance's host and see it through.
pub struct RunInstanceAction;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInstanceActionRequest {
    pub request_id: String,
    pub instance_uuid: String,
    #[serde(flatten)]
    pub action: InstanceAction,
}

impl Method for RunInstanceAction {
    const NAME: &'static str = "run_instance_action";
    type Request = RunInstanceActionRequest;
    type Response = ();
}

/// An agent announces itself at start (creates or refreshes its service record).
pub struct ServiceRegister;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub host: String,
    /// `mica-agent`.
    pub binary: String,
    /// The agent's version (its crate version).
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub service_id: String,
    /// Seconds between heartbeats the controller expects.
    pub report_interval_s: u64,
    /// Whether an operator disabled the service (it gets no new builds).
    pub disabled: bool,
}

impl Method for ServiceRegister {
    const NAME: &'static str = "service_register";
    type Request = RegisterRequest;
    type Response = Registered;
}

/// "I am alive" every `report_interval_s`.
pub struct ServiceHeartbeat;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host: String,
    pub binary: String,
}

impl Method for ServiceHeartbeat {
    const NAME: &'static str = "service_heartbeat";
    type Request = Heartbeat;
    type Response = ();
}

/// One resource class of the host's inventory, as placement models it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub total: u64,
    #[serde(default)]
    pub reserved: u64,
    #[serde(default = "one")]
    pub min_unit: u64,
    pub max_unit: u64,
    #[serde(default = "one")]
    pub step_size: u64,
    pub allocation_ratio: f64,
}

fn one() -> u64 {
    1
}

/// The agent's resource provider: inventories (`VCPU`, `MEMORY_MB`, `DISK_GB`),
/// traits (`HW_CPU_X86_AVX2`, …) and what `os-hypervisors` shows. Creates the
/// provider on first use.
pub struct UpdateProvider;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderUpdate {
    pub host: String,
    pub inventories: BTreeMap<String, Inventory>,
    pub traits: Vec<String>,
    pub hypervisor: HypervisorInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HypervisorInfo {
    /// `mica`.
    pub hypervisor_type: String,
    pub hypervisor_version: u64,
    /// The host's address for operators.
    pub host_ip: String,
    pub cpu_model: String,
    pub running_vms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderUpdated {
    pub provider_uuid: String,
    pub generation: u64,
}

impl Method for UpdateProvider {
    const NAME: &'static str = "update_provider";
    type Request = ProviderUpdate;
    type Response = ProviderUpdated;
}

/// Why an operation failed, for the instance's `fault`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// For users (`fault.message`).
    pub message: String,
    /// For admins (`fault.details`).
    #[serde(default)]
    pub details: String,
    /// Whether another host might succeed (a host problem, not a bad request).
    #[serde(default)]
    pub retryable: bool,
}

/// The outcome of [`crate::compute::BuildAndRunInstance`].
pub struct InstanceBuildFinished;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildFinished {
    pub instance_uuid: String,
    pub vmm_id: String,
    pub host: String,
    pub attempt: u32,
    pub result: Result<Running, Failure>,
}

/// A VMM that runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub power_state: PowerState,
    /// Milliseconds from the build request's arrival to the VMM running.
    #[serde(default)]
    pub took_ms: u64,
}

impl Method for InstanceBuildFinished {
    const NAME: &'static str = "instance_build_finished";
    type Request = BuildFinished;
    type Response = ();
}

/// The outcome of [`crate::compute::PowerAction`].
pub struct InstanceActionFinished;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionFinished {
    pub instance_uuid: String,
    pub request_id: String,
    /// [`crate::compute::Action::name`].
    pub action: String,
    pub host: String,
    /// The VMM running after the action (a new one after start or hard reboot),
    /// none when the instance is stopped.
    pub vmm_id: Option<String>,
    pub result: Result<PowerState, Failure>,
}

impl Method for InstanceActionFinished {
    const NAME: &'static str = "instance_action_finished";
    type Request = ActionFinished;
    type Response = ();
}

/// The outcome of [`crate::compute::TerminateInstance`].
pub struct InstanceTerminated;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Terminated {
    pub instance_uuid: String,
    pub host: String,
    pub result: Result<(), Failure>,
}

impl Method for InstanceTerminated {
    const NAME: &'static str = "instance_terminated";
    type Request = Terminated;
    type Response = ();
}

/// What the database believes runs on a host, for the agent's power-state sync.
pub struct HostInstances;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInstancesRequest {
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownInstance {
    pub instance_uuid: String,
    pub vmm_id: Option<String>,
    /// Nova's `vm_state` (`active`, `stopped`, `paused`, …).
    pub vm_state: String,
    pub task_state: Option<String>,
    pub power_state: PowerState,
}

impl Method for HostInstances {
    const NAME: &'static str = "host_instances";
    type Request = HostInstancesRequest;
    type Response = Vec<KnownInstance>;
}

/// The agent found an instance in another power state than the database
/// believes (a VMM died, say). The conductor records it as Nova's
/// `_sync_power_states` does: a dead VMM makes the instance SHUTOFF; it is not
/// restarted.
pub struct PowerStateChanged;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerStateChange {
    pub instance_uuid: String,
    pub host: String,
    /// The VMM observed (none: no VMM runs for the instance).
    pub vmm_id: Option<String>,
    pub power_state: PowerState,
}

impl Method for PowerStateChanged {
    const NAME: &'static str = "power_state_changed";
    type Request = PowerStateChange;
    type Response = ();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_results_round_trip_as_ok_or_err() {
        let ok = BuildFinished {
            instance_uuid: "i".into(),
            vmm_id: "v".into(),
            host: "h".into(),
            attempt: 1,
            result: Ok(Running {
                power_state: PowerState::Running,
                took_ms: 12,
            }),
        };
        let json = serde_json::to_value(&ok).unwrap();
        assert_eq!(json["result"]["Ok"]["power_state"], "running");
        assert_eq!(serde_json::from_value::<BuildFinished>(json).unwrap(), ok);

        let err: BuildFinished = serde_json::from_value(serde_json::json!({
            "instance_uuid": "i", "vmm_id": "v", "host": "h", "attempt": 2,
            "result": {"Err": {"message": "Image checksum mismatch"}}
        }))
        .unwrap();
        let failure = err.result.unwrap_err();
        assert_eq!(failure.message, "Image checksum mismatch");
        assert!(!failure.retryable);
    }
}
