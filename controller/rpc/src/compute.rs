//! The compute interface: what the conductor asks of a compute agent, on the
//! topic `compute.<host>` (and the fanout to all computes).
//!
//! Interface version 1.0. Long operations are casts: the agent answers by
//! casting a report to the conductor ([`crate::conductor`]), never by holding a
//! call open. Every request names the instance and the VMM incarnation it is
//! about: an instance (the user's object) outlives its VMMs, and each build,
//! start or hard reboot runs a new VMM with its own id (chosen by the
//! conductor, so a replayed saga step asks for the same one). Handlers are
//! idempotent: the same request twice has the effect of one.
//!
//! | method | kind | report |
//! |---|---|---|
//! | [`BuildAndRunInstance`] | cast | [`crate::conductor::InstanceBuildFinished`] |
//! | [`TerminateInstance`] | cast | [`crate::conductor::InstanceTerminated`] |
//! | [`PowerAction`] | cast | [`crate::conductor::InstanceActionFinished`] |
//! | [`ApplyPortSecurity`] | cast | none (applied within seconds) |
//! | [`GetConsoleOutput`] | call | the reply |
//! | [`ConsoleConnect`] | call | the reply (an address and a single-use ticket) |
//! | [`GetHostState`] | call | the reply |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Method, Version};

/// The version of this interface the agent serves.
pub const VERSION: Version = Version::new(1, 0);

/// Nova's power states, as `OS-EXT-STS:power_state` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// 0: unknown.
    NoState,
    /// 1
    Running,
    /// 3
    Paused,
    /// 4
    Shutdown,
    /// 6
    Crashed,
    /// 7
    Suspended,
}

impl PowerState {
    /// The number Nova's API reports.
    pub fn code(self) -> u8 {
        match self {
            PowerState::NoState => 0,
            PowerState::Running => 1,
            PowerState::Paused => 3,
            PowerState::Shutdown => 4,
            PowerState::Crashed => 6,
            PowerState::Suspended => 7,
        }
    }
}

/// Everything a compute host needs to build and run an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub uuid: String,
    pub name: String,
    /// The guest's host name (Nova's sanitized display name).
    pub hostname: String,
    pub project_id: String,
    pub user_id: String,
    pub flavor: FlavorSpec,
    pub image: ImageSpec,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// An SSH public key from the key pair, if any.
    #[serde(default)]
    pub key_data: Option<String>,
    /// Base64 user data, if any.
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub launch_index: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlavorSpec {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub root_gb: u64,
    #[serde(default)]
    pub ephemeral_gb: u64,
    #[serde(default)]
    pub swap_mb: u64,
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

/// The image to boot, and how to fetch it from the image API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub id: String,
    pub name: String,
    /// `raw` or `qcow2`.
    pub disk_format: String,
    pub size: u64,
    /// MD5 of the data, hex (Glance's `checksum`).
    pub checksum: Option<String>,
    /// `sha512` (Glance's `os_hash_algo`).
    pub os_hash_algo: Option<String>,
    /// Hex digest with `os_hash_algo`: the agent verifies downloads with it.
    pub os_hash_value: Option<String>,
    /// `GET` this URL for the data (the image API's `/v2/images/{id}/file`).
    pub download_url: String,
    /// A short-lived token for `download_url` (`X-Auth-Token`).
    pub download_token: String,
    /// Image properties (`hw_*`, `os_*`, `kernel_id`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
}

/// A port (a NIC) of the instance, with the addresses the controller allocated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortSpec {
    pub id: String,
    pub mac_address: String,
    pub network: NetworkSpec,
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroupSpec>,
    /// Port security (anti-spoofing and security groups); Neutron's default is on.
    #[serde(default = "yes")]
    pub port_security_enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: String,
}

/// A network as a compute host sees it: a flat provider network bridged on
/// every host (more types later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub id: String,
    pub name: String,
    /// `flat` for now.
    pub network_type: String,
    pub mtu: u32,
    pub subnets: Vec<SubnetSpec>,
    /// Masquerade the guests' outbound traffic through the host.
    #[serde(default)]
    pub nat: bool,
    /// A project's own network: its gateway address and DHCP server live in
    /// a network namespace of their own on each host, so two projects may
    /// use the same CIDR and the host's routing table never sees either.
    /// Otherwise (shared, external or default networks, the provider kind)
    /// the host holds the gateway address on the bridge and routes for it.
    #[serde(default)]
    pub isolated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetSpec {
    pub id: String,
    /// `10.0.0.0/24`.
    pub cidr: String,
    pub ip_version: u8,
    pub gateway_ip: Option<String>,
    #[serde(default)]
    pub dns_nameservers: Vec<String>,
    #[serde(default = "yes")]
    pub enable_dhcp: bool,
}

/// A security group with its rules and the addresses of its members (for rules
/// whose source is a group, like the `default` group's "from the same group").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroupSpec {
    pub id: String,
    pub name: String,
    pub rules: Vec<SecurityGroupRule>,
    /// Fixed IPs of every port in this group, on every host.
    #[serde(default)]
    pub member_ips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

/// Neutron's security group rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: String,
    pub direction: Direction,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// `tcp`, `udp`, `icmp`, a protocol number, or none for any.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port_range_min: Option<u16>,
    #[serde(default)]
    pub port_range_max: Option<u16>,
    #[serde(default)]
    pub remote_ip_prefix: Option<String>,
    /// Traffic from/to the members of this group (see
    /// [`SecurityGroupSpec::member_ips`]).
    #[serde(default)]
    pub remote_group_id: Option<String>,
}

/// Build the instance and start its first VMM. Report:
/// [`crate::conductor::InstanceBuildFinished`].
pub struct BuildAndRunInstance;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub instance: InstanceSpec,
    /// The VMM incarnation to start.
    pub vmm_id: String,
    /// 1 for the first host tried, 2 for the first alternate, …
    pub attempt: u32,
}

impl Method for BuildAndRunInstance {
    const NAME: &'static str = "build_and_run_instance";
    type Request = BuildRequest;
    type Response = ();
}

/// Stop the instance's VMM (if any) and remove everything of it on this host:
/// process, taps, disks, firewall rules. Idempotent; also the undo of a build.
/// Report: [`crate::conductor::InstanceTerminated`].
pub struct TerminateInstance;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TerminateRequest {
    pub instance_uuid: String,
    /// Let the guest shut down for up to this long before a hard stop (0: hard).
    #[serde(default)]
    pub shutdown_timeout_s: u64,
}

impl Method for TerminateInstance {
    const NAME: &'static str = "terminate_instance";
    type Request = TerminateRequest;
    type Response = ();
}

/// A power action on an instance this host runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Graceful shutdown (ACPI power button), then hard after the timeout.
    Stop {
        shutdown_timeout_s: u64,
    },
    /// Start a new VMM for a stopped instance.
    Start {
        vmm_id: String,
    },
    /// Soft: ask the guest to reboot (falls back to hard after the timeout).
    /// Hard: kill the VMM and start a new one.
    Reboot {
        hard: bool,
        vmm_id: String,
        shutdown_timeout_s: u64,
    },
    Pause,
    Unpause,
    /// Until VMM snapshots exist, suspend pauses the vCPUs (the API notes say so).
    Suspend,
    Resume,
}

impl Action {
    /// The action's name as instance actions record it (`stop`, `reboot`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Stop { .. } => "stop",
            Action::Start { .. } => "start",
            Action::Reboot { .. } => "reboot",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
        }
    }
}

/// Report: [`crate::conductor::InstanceActionFinished`].
pub struct PowerAction;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerActionRequest {
    pub instance_uuid: String,
    /// The instance action (`os-instance-actions`) this belongs to.
    pub request_id: String,
    #[serde(flatten)]
    pub action: Action,
}

impl Method for PowerAction {
    const NAME: &'static str = "power_action";
    type Request = PowerActionRequest;
    type Response = ();
}

/// Replace the security groups of one port on this host (rules or membership
/// changed). Applied to the running instance within seconds.
pub struct ApplyPortSecurity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortSecurityRequest {
    pub instance_uuid: String,
    pub port_id: String,
    pub security_groups: Vec<SecurityGroupSpec>,
}

impl Method for ApplyPortSecurity {
    const NAME: &'static str = "apply_port_security";
    type Request = PortSecurityRequest;
    type Response = ();
}

/// The end of the instance's serial console log.
pub struct GetConsoleOutput;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleOutputRequest {
    pub instance_uuid: String,
    /// Last N lines; all when absent.
    #[serde(default)]
    pub length: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleOutput {
    pub output: String,
}

impl Method for GetConsoleOutput {
    const NAME: &'static str = "get_console_output";
    type Request = ConsoleOutputRequest;
    type Response = ConsoleOutput;
}

/// Which console of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleKind {
    /// The framebuffer, as RFB (VNC) with no authentication.
    Vnc,
    /// The 16550 serial port (the guest's `ttyS0`).
    Serial,
}

impl ConsoleKind {
    /// `vnc` or `serial`.
    pub fn name(self) -> &'static str {
        match self {
            ConsoleKind::Vnc => "vnc",
            ConsoleKind::Serial => "serial",
        }
    }
}

/// Open an instance's console to the console proxy: the agent checks that
/// the instance runs on this host with that console, and answers the
/// address of its console channel and a ticket for one connection. The
/// proxy connects there, sends the ticket and a newline, reads `OK` and a
/// newline, and from then on the connection carries the console's bytes
/// both ways (an `ERR <reason>` line and a close instead when refused).
/// The bus's authentication is what authenticates the ticket's delivery.
pub struct ConsoleConnect;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleConnectRequest {
    pub instance_uuid: String,
    pub kind: ConsoleKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleTicket {
    /// `host:port` of the agent's console channel.
    pub address: String,
    /// Valid for one connection, for [`ConsoleTicket::ttl_s`] seconds.
    pub ticket: String,
    pub ttl_s: u64,
}

impl Method for ConsoleConnect {
    const NAME: &'static str = "console_connect";
    type Request = ConsoleConnectRequest;
    type Response = ConsoleTicket;
}

/// What this host really runs, for power-state sync and operators.
pub struct GetHostState;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStateRequest {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInstance {
    pub instance_uuid: String,
    pub vmm_id: Option<String>,
    pub power_state: PowerState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    pub host: String,
    pub instances: Vec<HostInstance>,
}

impl Method for GetHostState {
    const NAME: &'static str = "get_host_state";
    type Request = HostStateRequest;
    type Response = HostState;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_action_is_flat_json_with_an_action_tag() {
        let req = PowerActionRequest {
            instance_uuid: "i-1".into(),
            request_id: "req-1".into(),
            action: Action::Reboot {
                hard: true,
                vmm_id: "v-2".into(),
                shutdown_timeout_s: 60,
            },
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"instance_uuid": "i-1", "request_id": "req-1",
                "action": "reboot", "hard": true, "vmm_id": "v-2", "shutdown_timeout_s": 60})
        );
        let back: PowerActionRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.action.name(), "reboot");
    }

    #[test]
    fn optional_fields_default_and_unknown_fields_are_ignored() {
        let port: PortSpec = serde_json::from_value(serde_json::json!({
            "id": "p", "mac_address": "fa:16:3e:00:00:01",
            "network": {"id": "n", "name": "default", "network_type": "flat", "mtu": 1500,
                        "subnets": [{"id": "s", "cidr": "10.0.0.0/24", "ip_version": 4,
                                     "gateway_ip": "10.0.0.1"}]},
            "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.5"}],
            "a_field_from_the_future": 1
        }))
        .unwrap();
        assert!(port.port_security_enabled);
        assert!(port.security_groups.is_empty());
        assert!(port.network.subnets[0].enable_dhcp);
        assert!(!port.network.nat);
    }

    #[test]
    fn power_state_codes_are_novas() {
        let codes: Vec<u8> = [
            PowerState::NoState,
            PowerState::Running,
            PowerState::Paused,
            PowerState::Shutdown,
            PowerState::Crashed,
            PowerState::Suspended,
        ]
        .iter()
        .map(|s| s.code())
        .collect();
        assert_eq!(codes, [0, 1, 3, 4, 6, 7]);
    }
}
