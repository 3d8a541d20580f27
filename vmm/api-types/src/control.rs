//! Requests and answers of the control socket.

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;

/// The VM's lifecycle state as the control socket reports it.
///
/// ```text
///            PUT state=paused
///  running ───────────────────► paused
///     │  ◄─────────────────────   │
///     │      PUT state=running    │
///     │ POST shutdown             │
///     ▼                           │
///  shutting_down                  │
///     │ guest powers off,         │ POST stop (from any state),
///     │ or the timeout expires    │ guest power-off or reset, SIGTERM
///     ▼                           ▼
///  stopped ──► the process exits
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    ShuttingDown,
    Stopped,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting_down",
            VmState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /vm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub state: VmState,
    /// The `--id` the VMM was started with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The VMM's process id.
    pub pid: u32,
    /// Milliseconds since the VMM process started.
    pub uptime_ms: u64,
    /// Milliseconds from the start of the current boot (the process start, or the
    /// reboot) until the guest's userspace wrote the boot timer; absent until it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_time_ms: Option<f64>,
    /// Number of times the guest was booted by this process (1 + reboots).
    pub boots: u32,
    pub config: VmConfig,
}

/// `PUT /vm/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRequest {
    pub state: RequestedState,
}

/// The states a client may ask for with `PUT /vm/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestedState {
    Paused,
    Running,
}

/// `POST /vm/shutdown`: press the ACPI power button, then stop the VM if the guest
/// has not powered off after `timeout_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    #[serde(default = "default_shutdown_timeout")]
    pub timeout_s: u64,
}

impl Default for ShutdownRequest {
    fn default() -> Self {
        Self {
            timeout_s: default_shutdown_timeout(),
        }
    }
}

fn default_shutdown_timeout() -> u64 {
    30
}

/// `POST /vm/reboot`: `hard: false` sends Ctrl-Alt-Del to the guest, which reboots
/// itself; `hard: true` resets the VM at once. Either way the guest boots again in
/// the same VMM process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootRequest {
    #[serde(default)]
    pub hard: bool,
}

/// The answer to an action: the state the VM is in after it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionAnswer {
    pub state: VmState,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
