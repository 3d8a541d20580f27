//! The contract between `mica-vmm` and whoever runs it (the compute agent, tests,
//! an operator with `curl --unix-socket`): the configuration file, the control
//! socket's requests and responses, and the process exit codes.
//!
//! This crate has no KVM code so the agent can depend on it cheaply.
//!
//! # Control socket
//!
//! HTTP/1.1 with JSON bodies over the Unix stream socket given by `--api-sock`.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /vm` | | 200 [`VmInfo`] |
//! | `PUT /vm/state` | [`StateRequest`] | 200 [`ActionAnswer`] |
//! | `POST /vm/shutdown` | [`ShutdownRequest`] (optional) | 202 [`ActionAnswer`] |
//! | `POST /vm/stop` | | 200 [`ActionAnswer`] |
//! | `POST /vm/reboot` | [`RebootRequest`] (optional) | 202 [`ActionAnswer`] |
//! | `GET /metrics` | | 200 [`Metrics`] |
//!
//! Every error answers with an [`ErrorBody`]: 400 for a malformed request, 404 for
//! an unknown path, 405 for a wrong method, 409 for an action that the VM's
//! current state does not allow, 500 when the VMM failed to carry it out.

pub mod config;
pub mod control;
pub mod metrics;

pub use config::{DiskConfig, DisplayConfig, NicConfig, SerialConfig, VmConfig};
pub use control::{
    ActionAnswer, ErrorBody, RebootRequest, RequestedState, ShutdownRequest, StateRequest, VmInfo,
    VmState,
};
pub use metrics::{
    BlockMetrics, DisplayMetrics, Metrics, NetMetrics, RngMetrics, SerialMetrics, VcpuMetrics,
};

/// Paths served on the control socket.
pub mod paths {
    pub const VM: &str = "/vm";
    pub const VM_STATE: &str = "/vm/state";
    pub const VM_SHUTDOWN: &str = "/vm/shutdown";
    pub const VM_STOP: &str = "/vm/stop";
    pub const VM_REBOOT: &str = "/vm/reboot";
    pub const METRICS: &str = "/metrics";
}

/// Exit codes of the `mica-vmm` process.
pub mod exit_code {
    /// The guest powered off (by itself or after a graceful shutdown request), or
    /// the VM was stopped through the control socket or by SIGTERM/SIGINT.
    pub const OK: i32 = 0;
    /// The VMM failed: bad configuration, KVM error, internal error.
    pub const ERROR: i32 = 1;
    /// The command line was wrong.
    pub const USAGE: i32 = 2;
    /// The guest asked for a reset (reboot) that nobody requested through the
    /// control socket. Whoever supervises the VMM decides whether to start it again.
    pub const GUEST_RESET: i32 = 3;
    /// A graceful shutdown did not finish within its timeout; the VM was stopped.
    pub const SHUTDOWN_TIMEOUT: i32 = 4;
}
