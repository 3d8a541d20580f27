//! The seam between the agent's service (RPC, registration, heartbeats,
//! reports, power-state sync: [`crate::service`]) and what really runs the
//! instances: [`crate::host::VmmBackend`] (mica-vmm on KVM, with disks,
//! bridges, taps, DHCP and nftables) or [`crate::sim::SimulatedBackend`]
//! (pretend instances for controller tests).
//!
//! A backend answers each compute request with its outcome; the service turns
//! outcomes into the conductor's reports. Backends make every operation
//! idempotent (the bus delivers casts at least once) and serialize the
//! operations on one instance themselves.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

use mica_rpc::compute::{
    BuildRequest, ConsoleKind, ConsoleOutputRequest, HostInstance, PortSecurityRequest,
    PowerActionRequest, PowerState, TerminateRequest,
};
use mica_rpc::conductor::{Failure, HypervisorInfo, Inventory};
use tokio::sync::mpsc;

/// Something a backend noticed without being asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An instance's power state changed by itself: its VMM died, or the
    /// guest powered itself off.
    PowerState {
        instance_uuid: String,
        vmm_id: Option<String>,
        power_state: PowerState,
    },
    /// A build the agent was doing when it stopped (a crash) was undone at
    /// start: the conductor still waits for its outcome.
    BuildAborted {
        instance_uuid: String,
        vmm_id: String,
        attempt: u32,
        failure: Failure,
    },
}

/// Where a backend sends its [`Event`]s.
pub type EventSender = mpsc::UnboundedSender<Event>;

/// The host's resource provider as placement should see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// `VCPU`, `MEMORY_MB`, `DISK_GB`.
    pub inventories: BTreeMap<String, Inventory>,
    /// `HW_CPU_X86_AVX2`, …, sorted.
    pub traits: Vec<String>,
    pub hypervisor: HypervisorInfo,
}

/// The outcome of a power action.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    /// The VMM running after the action; none when the instance is stopped.
    pub vmm_id: Option<String>,
    pub power_state: PowerState,
}

/// A compute backend. See the module docs.
pub trait Backend: Send + Sync + 'static {
    /// Called once before the agent serves: find what already runs on the
    /// host (adopt it), and keep `events` to report later changes.
    fn start(&self, events: EventSender) -> impl Future<Output = Result<(), Failure>> + Send;

    /// The host's inventories, traits and hypervisor details.
    fn resources(&self) -> impl Future<Output = Result<Resources, Failure>> + Send;

    /// Builds the instance and starts the requested VMM; returns once it
    /// runs. A failure leaves nothing of the instance behind.
    fn build(&self, req: &BuildRequest)
    -> impl Future<Output = Result<PowerState, Failure>> + Send;

    /// Stops the instance's VMM and removes everything of it on the host.
    /// Terminating an unknown instance succeeds.
    fn terminate(&self, req: &TerminateRequest)
    -> impl Future<Output = Result<(), Failure>> + Send;

    /// Stop, start, reboot, pause, unpause, suspend, resume.
    fn power_action(
        &self,
        req: &PowerActionRequest,
    ) -> impl Future<Output = Result<ActionOutcome, Failure>> + Send;

    /// Replaces one port's security groups on the running instance.
    fn apply_port_security(
        &self,
        req: &PortSecurityRequest,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// The end of the instance's serial console log.
    fn console_output(
        &self,
        req: &ConsoleOutputRequest,
    ) -> impl Future<Output = Result<String, Failure>> + Send;

    /// The Unix socket of a running instance's console (its VMM's VNC or
    /// serial socket), for the console channel. Fails with a message for
    /// users when the instance is not here, not running, or has no such
    /// console.
    fn console_socket(
        &self,
        instance_uuid: &str,
        kind: ConsoleKind,
    ) -> impl Future<Output = Result<PathBuf, Failure>> + Send;

    /// Every instance on this host and its real power state.
    fn instances(&self) -> impl Future<Output = Vec<HostInstance>> + Send;

    /// Periodic upkeep (the image cache's cleanup).
    fn housekeeping(&self) -> impl Future<Output = ()> + Send;
}

/// A [`Failure`] for a request that cannot succeed on any host.
pub fn failure(message: impl Into<String>, details: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        details: details.into(),
        retryable: false,
    }
}

/// A [`Failure`] that another host might not have (a host problem).
pub fn host_failure(message: impl Into<String>, details: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        details: details.into(),
        retryable: true,
    }
}

/// Formats an error with its sources (`outer: inner: innermost`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}
