//! The agent's configuration: one TOML file (`/etc/mica/agent.toml` by
//! default), every key optional, with command-line overrides.
//!
//! The documented defaults are `agent/agent.toml` ([`DEFAULTS_TOML`],
//! printed by `mica-agent config defaults`); a test checks that it parses to
//! [`Config::default`], so the file and the code cannot drift apart.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The commented default configuration.
pub const DEFAULTS_TOML: &str = include_str!("../agent.toml");

/// Where the agent looks for its file when none is given.
pub const DEFAULT_PATH: &str = "/etc/mica/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("--set {0:?}: expected section.key=value")]
    BadOverride(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentSection,
    pub rpc: RpcSection,
    pub vmm: VmmSection,
    pub resources: ResourcesSection,
    pub images: ImagesSection,
    pub disks: DisksSection,
    pub network: NetworkSection,
    pub console: ConsoleSection,
    pub simulated: SimulatedSection,
}

/// Which compute backend runs the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Real microVMs (mica-vmm on /dev/kvm).
    #[default]
    Vmm,
    /// Pretend instances, for controller tests.
    Simulated,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vmm" => Ok(BackendKind::Vmm),
            "simulated" => Ok(BackendKind::Simulated),
            other => Err(format!("unknown backend {other:?} (vmm or simulated)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    pub host: String,
    pub backend: BackendKind,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub report_interval_s: u64,
    pub resource_update_interval_s: u64,
    pub sync_power_state_interval_s: u64,
    pub log_level: String,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            host: String::new(),
            backend: BackendKind::Vmm,
            state_dir: "/var/lib/mica".into(),
            run_dir: "/run/mica".into(),
            report_interval_s: 10,
            resource_update_interval_s: 60,
            sync_power_state_interval_s: 600,
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcSection {
    pub url: String,
    pub namespace: String,
    pub queue_expiry_s: u64,
}

impl Default for RpcSection {
    fn default() -> Self {
        Self {
            url: "amqp://mica:mica@127.0.0.1:5672/mica".into(),
            namespace: "mica".into(),
            queue_expiry_s: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmmSection {
    pub binary: String,
    pub kernel: PathBuf,
    pub initrd: String,
    pub cmdline: String,
    pub extra_cmdline: String,
    pub shutdown_timeout_s: u64,
    pub start_timeout_s: u64,
    pub log_level: String,
    pub display: bool,
    pub display_width: u32,
    pub display_height: u32,
}

impl Default for VmmSection {
    fn default() -> Self {
        Self {
            binary: String::new(),
            kernel: "/var/lib/mica/kernels/vmlinux".into(),
            initrd: String::new(),
            cmdline: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw".into(),
            extra_cmdline: String::new(),
            shutdown_timeout_s: 60,
            start_timeout_s: 30,
            log_level: "info".into(),
            display: true,
            display_width: mica_vmm_api::config::DEFAULT_DISPLAY_WIDTH,
            display_height: mica_vmm_api::config::DEFAULT_DISPLAY_HEIGHT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcesSection {
    pub reserved_host_cpus: u64,
    pub reserved_host_memory_mb: u64,
    pub reserved_host_disk_mb: u64,
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
}

impl Default for ResourcesSection {
    fn default() -> Self {
        Self {
            reserved_host_cpus: 0,
            reserved_host_memory_mb: 512,
            reserved_host_disk_mb: 0,
            cpu_allocation_ratio: 4.0,
            ram_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesSection {
    pub remove_unused_after_s: u64,
    pub cleanup_interval_s: u64,
    pub qemu_img: String,
    pub download_timeout_s: u64,
}

impl Default for ImagesSection {
    fn default() -> Self {
        Self {
            remove_unused_after_s: 86400,
            cleanup_interval_s: 2400,
            qemu_img: "qemu-img".into(),
            download_timeout_s: 3600,
        }
    }
}

/// How an ephemeral disk is formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EphemeralFormat {
    #[default]
    Ext4,
    Vfat,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DisksSection {
    pub ephemeral_format: EphemeralFormat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    pub bridge_prefix: String,
    pub tap_prefix: String,
    pub dnsmasq: String,
    pub dhcp_lease_s: u64,
    pub security_groups: bool,
    pub nat_interface: String,
    pub metadata_url: String,
    pub metadata_shared_secret: String,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            bridge_prefix: "brq".into(),
            tap_prefix: "tap".into(),
            dnsmasq: "dnsmasq".into(),
            dhcp_lease_s: 86400,
            security_groups: true,
            nat_interface: String::new(),
            metadata_url: String::new(),
            metadata_shared_secret: String::new(),
        }
    }
}

/// The console channel: where the console proxy reaches the instances'
/// VNC and serial consoles (see [`crate::console`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSection {
    pub listen: String,
    pub advertise: String,
    pub ticket_ttl_s: u64,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:6090".into(),
            advertise: String::new(),
            ticket_ttl_s: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatedSection {
    pub vcpus: u64,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub build_delay_ms: u64,
    pub build_jitter_ms: u64,
    pub action_delay_ms: u64,
    pub failure_rate: f64,
}

impl Default for SimulatedSection {
    fn default() -> Self {
        Self {
            vcpus: 64,
            memory_mb: 262_144,
            disk_gb: 4096,
            build_delay_ms: 0,
            build_jitter_ms: 0,
            action_delay_ms: 0,
            failure_rate: 0.0,
        }
    }
}

impl Config {
    /// Parses a file's text (`origin` names it in errors) and applies the
    /// `section.key=value` overrides; values are TOML (`4`, `true`,
    /// `"text"`), or plain text when they do not parse as TOML.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: Config =
            Config::deserialize(table).map_err(|e: toml::de::Error| ConfigError::Parse {
                path: origin.to_owned(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads `path` (or [`DEFAULT_PATH`] if it exists, else the defaults) and
    /// applies the overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None if Path::new(DEFAULT_PATH).exists() => (
                std::fs::read_to_string(DEFAULT_PATH).map_err(|source| ConfigError::Read {
                    path: DEFAULT_PATH.into(),
                    source,
                })?,
                DEFAULT_PATH.to_owned(),
            ),
            None => (String::new(), "(defaults)".to_owned()),
        };
        Config::parse(&text, &origin, overrides)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.agent.report_interval_s == 0 {
            return bad("agent.report_interval_s must be at least 1".into());
        }
        if self.agent.sync_power_state_interval_s == 0 {
            return bad("agent.sync_power_state_interval_s must be at least 1".into());
        }
        if self.agent.resource_update_interval_s == 0 {
            return bad("agent.resource_update_interval_s must be at least 1".into());
        }
        for (name, r) in [
            ("cpu", self.resources.cpu_allocation_ratio),
            ("ram", self.resources.ram_allocation_ratio),
            ("disk", self.resources.disk_allocation_ratio),
        ] {
            if !(r.is_finite() && r > 0.0) {
                return bad(format!(
                    "resources.{name}_allocation_ratio must be positive"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.simulated.failure_rate) {
            return bad("simulated.failure_rate must be between 0.0 and 1.0".into());
        }
        for (name, prefix) in [
            ("bridge_prefix", &self.network.bridge_prefix),
            ("tap_prefix", &self.network.tap_prefix),
        ] {
            if prefix.is_empty()
                || prefix.len() > 4
                || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return bad(format!(
                    "network.{name} must be 1 to 4 letters or digits (interface names have 15 bytes)"
                ));
            }
        }
        if !self.console.listen.is_empty()
            && self.console.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return bad(format!(
                "console.listen {:?} is not an address:port (e.g. 0.0.0.0:6090), nor empty",
                self.console.listen
            ));
        }
        if !self.console.advertise.is_empty() && !valid_host_port(&self.console.advertise) {
            return bad(format!(
                "console.advertise {:?} is not a host:port (e.g. 192.0.2.10:6090), nor empty",
                self.console.advertise
            ));
        }
        if self.console.ticket_ttl_s == 0 {
            return bad("console.ticket_ttl_s must be at least 1".into());
        }
        if !(16..=8192).contains(&self.vmm.display_width)
            || !(16..=8192).contains(&self.vmm.display_height)
        {
            return bad("vmm.display_width and display_height must be 16 to 8192".into());
        }
        if self.agent.host.len() > 200 {
            return bad("agent.host is too long".into());
        }
        Ok(())
    }

    /// The host name to use: the configured one or the machine's.
    pub fn host_name(&self) -> String {
        if !self.agent.host.is_empty() {
            return self.agent.host.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    }
}

/// `host:port` with a non-empty host and a port number.
fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

fn apply_override(table: &mut toml::Table, o: &str) -> Result<(), ConfigError> {
    let (key, value) = o
        .split_once('=')
        .ok_or_else(|| ConfigError::BadOverride(o.to_owned()))?;
    let (section, field) = key
        .trim()
        .split_once('.')
        .ok_or_else(|| ConfigError::BadOverride(o.to_owned()))?;
    if section.is_empty() || field.is_empty() {
        return Err(ConfigError::BadOverride(o.to_owned()));
    }
    let value = value.trim();
    // A TOML value if it is one (`4`, `true`, `"x"`, `[1, 2]`), else text.
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = entry else {
        return Err(ConfigError::BadOverride(o.to_owned()));
    };
    section_table.insert(field.to_owned(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let parsed = Config::parse(DEFAULTS_TOML, "agent.toml", &[]).unwrap();
        assert_eq!(parsed, Config::default());
        // And the file mentions every key the code knows (serialize the
        // defaults and look each key up in the documented file).
        let value = toml::Table::try_from(Config::default()).unwrap();
        let documented: toml::Table = DEFAULTS_TOML.parse().unwrap();
        for (section, keys) in &value {
            let keys = keys.as_table().unwrap();
            let doc = documented[section].as_table().unwrap();
            for key in keys.keys() {
                assert!(
                    doc.contains_key(key),
                    "{section}.{key} is not in agent.toml"
                );
            }
        }
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(Config::parse("", "x", &[]).unwrap(), Config::default());
    }

    #[test]
    fn overrides_take_toml_values_or_text() {
        let c = Config::parse(
            "[agent]\nhost = \"from-file\"\n",
            "x",
            &[
                "agent.host=node-7".into(),
                "agent.report_interval_s=3".into(),
                "network.security_groups=false".into(),
                "rpc.url=memory://t".into(),
                "vmm.extra_cmdline = \"noxsave quiet\"".into(),
                "agent.backend=simulated".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.agent.host, "node-7");
        assert_eq!(c.agent.report_interval_s, 3);
        assert!(!c.network.security_groups);
        assert_eq!(c.rpc.url, "memory://t");
        assert_eq!(c.vmm.extra_cmdline, "noxsave quiet");
        assert_eq!(c.agent.backend, BackendKind::Simulated);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::parse("[agent]\nhots = \"x\"\n", "f.toml", &[]).unwrap_err();
        assert!(e.to_string().contains("hots"), "{e}");
        let e = Config::parse("", "x", &["agent.report_interval_s=0".into()]).unwrap_err();
        assert!(e.to_string().contains("report_interval_s"), "{e}");
        let e = Config::parse("", "x", &["simulated.failure_rate=1.5".into()]).unwrap_err();
        assert!(e.to_string().contains("failure_rate"), "{e}");
        let e = Config::parse("", "x", &["nokey".into()]).unwrap_err();
        assert!(matches!(e, ConfigError::BadOverride(_)), "{e}");
        let e = Config::parse("", "x", &["network.tap_prefix=toolong".into()]).unwrap_err();
        assert!(e.to_string().contains("tap_prefix"), "{e}");
        let e = Config::parse("", "x", &["console.listen=nowhere".into()]).unwrap_err();
        assert!(e.to_string().contains("console.listen"), "{e}");
        let e =
            Config::parse("", "x", &["console.advertise=host-without-port".into()]).unwrap_err();
        assert!(e.to_string().contains("console.advertise"), "{e}");
        let e = Config::parse("", "x", &["vmm.display_width=0".into()]).unwrap_err();
        assert!(e.to_string().contains("display_width"), "{e}");
        let e = Config::parse("[agent]\nbackend = \"qemu\"\n", "x", &[]).unwrap_err();
        assert!(e.to_string().contains("qemu"), "{e}");
    }
}
