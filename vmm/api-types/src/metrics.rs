//! `GET /metrics`: counters since the VMM process started (they survive reboots).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub vcpu: VcpuMetrics,
    /// Per disk, by disk id.
    pub block: BTreeMap<String, BlockMetrics>,
    /// Per NIC, by NIC id.
    pub net: BTreeMap<String, NetMetrics>,
    pub rng: RngMetrics,
    pub serial: SerialMetrics,
    /// The VNC server (zero without a display).
    #[serde(default)]
    pub display: DisplayMetrics,
    /// Sum of every error counter above.
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuMetrics {
    /// Every return from `KVM_RUN`.
    pub exits: u64,
    pub io_exits: u64,
    pub mmio_exits: u64,
    /// Port I/O or MMIO accesses no device claims (reads return all ones).
    pub unhandled_accesses: u64,
    /// KVM errors and unexpected exits.
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMetrics {
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub flush_ops: u64,
    /// Requests that failed: I/O errors, out-of-range or malformed requests,
    /// writes to a read-only disk.
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetMetrics {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames from the tap dropped because they did not fit the guest's buffer.
    pub rx_dropped: u64,
    /// Malformed TX chains and tap I/O errors.
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngMetrics {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialMetrics {
    /// Bytes the guest wrote to the console.
    pub out_bytes: u64,
    /// Bytes console clients sent to the guest.
    pub in_bytes: u64,
    /// Console output bytes lost (log write errors).
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayMetrics {
    /// VNC connections accepted (on the Unix socket and the TCP port), whether
    /// or not they finished the handshake.
    pub vnc_clients_accepted: u64,
    /// VNC connections open now.
    pub vnc_clients: u64,
    /// Bytes written to VNC clients (handshakes and updates).
    pub vnc_bytes_sent: u64,
    /// FramebufferUpdate messages sent.
    pub vnc_updates_sent: u64,
    /// Clients closed for a protocol error (not counted in `errors`: a bad
    /// client is not a VMM fault).
    pub vnc_protocol_errors: u64,
}
