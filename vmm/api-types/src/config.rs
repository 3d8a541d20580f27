//! The VM configuration file (`mica-vmm --config vm.json`).
//!
//! ```json
//! {
//!   "vcpus": 2,
//!   "memory_mib": 256,
//!   "kernel": "/var/lib/mica/kernels/vmlinux",
//!   "initrd": "/var/lib/mica/images/initramfs",
//!   "cmdline": "console=ttyS0 root=/dev/vda",
//!   "disks": [{ "id": "root", "path": "/var/lib/mica/disks/root.ext4", "read_only": false }],
//!   "nics": [{ "id": "eth0", "tap": "tap-1a2b", "mac": "52:54:00:12:34:56" }],
//!   "serial": { "log": "/run/mica/vm1/serial.log", "socket": "/run/mica/vm1/serial.sock" }
//! }
//! ```
//!
//! Unknown fields are errors, so a typo never goes unnoticed. The VMM checks the
//! values (ranges, files that must exist, unique ids) before it creates anything.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default cap of the serial log file: past it the file is rotated once (to
/// `<log>.1`), so at most twice this much is kept.
pub const DEFAULT_SERIAL_LOG_MAX_BYTES: u64 = 8 << 20;

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs, 1 to 32.
    pub vcpus: u32,
    /// Guest memory in MiB (at least 32).
    pub memory_mib: u64,
    /// The guest kernel: an uncompressed `vmlinux` (ELF) or a `bzImage`.
    pub kernel: PathBuf,
    /// An initramfs, loaded at the top of low memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line. The VMM appends `mica.boot_timer=<address>` when
    /// the boot timer is on.
    #[serde(default)]
    pub cmdline: String,
    /// Disks, offered as virtio-blk devices in this order (`vda`, `vdb`, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// NICs, offered as virtio-net devices backed by tap devices.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    /// Where the guest's serial console (COM1) goes.
    #[serde(default)]
    pub serial: SerialConfig,
    /// A linear framebuffer with a VNC server on it; absent: no display (and
    /// no cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<DisplayConfig>,
    /// Offer a virtio-rng device (default: true).
    #[serde(default = "default_true")]
    pub rng: bool,
    /// Offer the boot-timer pseudo-device (default: true).
    #[serde(default = "default_true")]
    pub boot_timer: bool,
}

/// A raw disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Unique among the disks; the guest reads it as the disk's serial
    /// (`/sys/block/vdX/serial`, at most 20 bytes).
    pub id: String,
    /// A raw image file or block device.
    pub path: PathBuf,
    /// Offer the disk read-only: the guest sees it so, and writes fail.
    #[serde(default)]
    pub read_only: bool,
}

/// A NIC on a host tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// Unique among the NICs; names the NIC in metrics (default: `net<index>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The host tap device's name (at most 15 bytes). The VMM attaches to it
    /// (and the kernel creates it if it does not exist and the VMM may).
    pub tap: String,
    /// The guest's MAC address, `xx:xx:xx:xx:xx:xx`, unicast.
    pub mac: String,
}

/// The serial console's destinations. Both are optional; with neither, the
/// console output is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// A log file the console output is appended to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// Size at which the log file is rotated to `<log>.1`.
    #[serde(default = "default_log_max")]
    pub log_max_bytes: u64,
    /// A Unix stream socket the VMM listens on: every client receives the console
    /// output from the moment it connects, and what clients send is the
    /// console's input (an interactive serial console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl Default for SerialConfig {
    fn default() -> Self {
        Self {
            log: None,
            log_max_bytes: DEFAULT_SERIAL_LOG_MAX_BYTES,
            socket: None,
        }
    }
}

/// Default framebuffer size.
pub const DEFAULT_DISPLAY_WIDTH: u32 = 1024;
pub const DEFAULT_DISPLAY_HEIGHT: u32 = 768;

/// The guest's screen: a 32 bpp linear framebuffer the guest kernel draws on
/// (announced in the boot parameters), served by the VMM's RFB (VNC) server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplayConfig {
    #[serde(default = "default_width")]
    pub width: u32,
    #[serde(default = "default_height")]
    pub height: u32,
    /// A Unix stream socket VNC clients connect to (security type None: the
    /// socket's permissions are the access control).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc_socket: Option<PathBuf>,
    /// Also listen on this TCP address, which must be a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc_tcp: Option<std::net::SocketAddr>,
}

impl Default for DisplayConfig {
    fn default() -> Self {
        Self {
            width: DEFAULT_DISPLAY_WIDTH,
            height: DEFAULT_DISPLAY_HEIGHT,
            vnc_socket: None,
            vnc_tcp: None,
        }
    }
}

fn default_width() -> u32 {
    DEFAULT_DISPLAY_WIDTH
}

fn default_height() -> u32 {
    DEFAULT_DISPLAY_HEIGHT
}

fn default_true() -> bool {
    true
}

fn default_log_max() -> u64 {
    DEFAULT_SERIAL_LOG_MAX_BYTES
}

impl NicConfig {
    /// The NIC's id: the configured one or `net<index>`.
    pub fn id_or_default(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| format!("net{index}"))
    }
}
