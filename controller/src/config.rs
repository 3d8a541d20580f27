//! Configuration: one TOML file, sections like nova.conf's.
//!
//! The file is `/etc/mica/controller.toml` unless `--config` or `MICA_CONFIG`
//! says otherwise; a missing default file means "all defaults". Every key has a
//! default and a doc comment; `mica-controller config defaults` prints them all
//! as a commented TOML file (committed as `controller/controller.toml.example`
//! and checked against the code by a test).
//!
//! Precedence, lowest first: built-in defaults, the file, environment variables
//! `MICA_<SECTION>_<KEY>` (e.g. `MICA_DATABASE_URL`, `MICA_API_IDENTITY_LISTEN`),
//! then `--set section.key=value` on the command line. Override values are
//! parsed as TOML values when they parse (`--set image.default_page_size=50`,
//! `--set filter_scheduler.enabled_filters=["ComputeFilter"]`) and taken as
//! strings otherwise (`--set database.url=postgres://…`).
//!
//! `[policy]` is the exception to "a fixed set of keys": it maps policy rule
//! names to rule expressions that replace the built-in defaults (see
//! [`crate::policy`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The documentation of one key, for `config defaults`.
#[derive(Debug, Clone)]
pub struct KeyDoc {
    /// The key's name inside its section.
    pub name: &'static str,
    /// What it does (the field's doc comment).
    pub doc: String,
    /// Its default, as a TOML value.
    pub default: String,
}

/// The documentation of one section.
#[derive(Debug, Clone)]
pub struct SectionDoc {
    /// The section's name (`database`).
    pub name: &'static str,
    /// What the section is for.
    pub doc: String,
    /// Its keys.
    pub keys: Vec<KeyDoc>,
}

fn toml_value<T: Serialize>(v: &T) -> String {
    #[derive(Serialize)]
    struct Wrap<'a, T: Serialize> {
        v: &'a T,
    }
    let s = toml::to_string(&Wrap { v }).expect("defaults serialize");
    s.trim()
        .strip_prefix("v = ")
        .expect("a `v = …` line")
        .to_owned()
}

fn join_doc(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Declares a config section: the struct, its defaults and its documentation,
/// all from one list so they cannot disagree.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        $name:ident, $toml:literal {
            $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// The section's name in the file.
            pub const NAME: &'static str = $toml;

            /// The section's documentation.
            pub fn describe() -> SectionDoc {
                let d = Self::default();
                SectionDoc {
                    name: $toml,
                    doc: join_doc(&[$($sdoc),*]),
                    keys: vec![ $( KeyDoc {
                        name: stringify!($field),
                        doc: join_doc(&[$($doc),*]),
                        default: toml_value(&d.$field),
                    }, )* ],
                }
            }
        }
    };
}

section! {
    /// The database: PostgreSQL in production, SQLite for the embedded default.
    Database, "database" {
        /// Where the database is: `postgres://user:password@host:port/dbname` or
        /// `sqlite:///path/to/file.db` (the SQLite file and its folder are
        /// created when missing).
        url: String = "sqlite:///var/lib/mica/mica.db".into(),
        /// Most connections the pool opens.
        max_connections: u32 = 16,
        /// Connections the pool keeps open when idle.
        min_connections: u32 = 0,
        /// Seconds to wait for a free connection before failing the request
        /// with 503.
        acquire_timeout_secs: u64 = 30,
        /// SQLite only: milliseconds a writer waits for the write lock.
        sqlite_busy_timeout_ms: u64 = 30000,
        /// Times a transaction that lost a race (deadlock, serialization
        /// failure, busy database) is retried before the request fails.
        max_retries: u32 = 10,
    }
}

section! {
    /// The message bus between the controller roles and the compute agents.
    /// Read by the RPC layer (scheduler, conductor, agents).
    Messaging, "messaging" {
        /// `amqp://user:password@host:5672/vhost` for RabbitMQ, or `memory://` for
        /// the in-process bus of the all-in-one process.
        transport_url: String = "memory://".into(),
        /// Seconds an RPC `call` waits for its reply.
        rpc_timeout_secs: u64 = 60,
        /// Prefix of every queue and exchange name; every process on one bus
        /// (controllers and agents) must use the same.
        namespace: String = "mica".into(),
        /// AMQP: delete queues unused for this many seconds (0: keep them).
        /// For tests and short-lived deployments.
        queue_expiry_secs: u64 = 0,
    }
}

section! {
    /// The HTTP APIs: where each listens and how it is reached. An empty listen
    /// address disables that API's listener.
    Api, "api" {
        /// Identity (Keystone v3) listen address.
        identity_listen: String = "0.0.0.0:5000".into(),
        /// Compute (Nova v2.1) listen address.
        compute_listen: String = "0.0.0.0:8774".into(),
        /// Image (Glance v2) listen address.
        image_listen: String = "0.0.0.0:9292".into(),
        /// Placement listen address.
        placement_listen: String = "0.0.0.0:8778".into(),
        /// Network (Neutron v2.0 subset) listen address.
        network_listen: String = "0.0.0.0:9696".into(),
        /// Metadata service listen address (guests reach it through their
        /// agent's proxy as 169.254.169.254:80).
        metadata_listen: String = "0.0.0.0:8775".into(),
        /// Console proxy (noVNC and serial WebSocket) listen address.
        console_proxy_listen: String = "0.0.0.0:6080".into(),
        /// Host name or address that clients use to reach this controller; the
        /// service catalog and version documents are built from it and each
        /// listener's port unless the `*_public_url` key of that API is set.
        public_host: String = "127.0.0.1".into(),
        /// Public URL of the identity API (default `http://<public_host>:<port>/v3`).
        identity_public_url: String = String::new(),
        /// Public URL of the compute API (default `http://<public_host>:<port>/v2.1`).
        compute_public_url: String = String::new(),
        /// Public URL of the image API (default `http://<public_host>:<port>`).
        image_public_url: String = String::new(),
        /// Public URL of the placement API (default `http://<public_host>:<port>`).
        placement_public_url: String = String::new(),
        /// Public URL of the network API (default `http://<public_host>:<port>`).
        network_public_url: String = String::new(),
        /// Public URL of the metadata service (default `http://<public_host>:<port>`).
        metadata_public_url: String = String::new(),
        /// Public URL of the console proxy (default `http://<public_host>:<port>`).
        console_proxy_public_url: String = String::new(),
        /// Region name of every catalog endpoint.
        region: String = "RegionOne".into(),
        /// Largest JSON request body accepted, in bytes (image data is not JSON
        /// and is limited by `[image] max_image_size_bytes`).
        max_json_body_bytes: usize = 114688,
        /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
        shutdown_grace_secs: u64 = 30,
        /// Seconds a client has to send a complete request head (request line
        /// and headers), counted from when the server waits for it: on a
        /// kept-alive connection, from the end of the previous response, so
        /// this also closes idle keep-alive connections. 0: no limit.
        header_timeout_secs: u64 = 20,
        /// Longest wait, in seconds, for the next piece of a request body
        /// (a body shorter than its Content-Length, a stalled upload); the
        /// request then fails with 408 and the connection closes. 0: no limit.
        body_timeout_secs: u64 = 60,
        /// Open connections each API listener serves at once; beyond, a new
        /// connection gets 503 with Retry-After and is closed. 0: no limit.
        max_connections: usize = 1024,
    }
}

section! {
    /// Identity: tokens and passwords.
    Identity, "identity" {
        /// Lifetime of a token, in seconds.
        token_expiration_secs: i64 = 3600,
        /// Expired tokens are deleted from the database this many seconds after
        /// they expire.
        expired_token_retention_secs: i64 = 3600,
        /// Seconds between two sweeps of expired tokens.
        token_cleanup_interval_secs: u64 = 600,
        /// Argon2id memory cost in KiB for new password hashes.
        argon2_memory_kib: u32 = 19456,
        /// Argon2id iterations for new password hashes.
        argon2_iterations: u32 = 2,
        /// Argon2id lanes for new password hashes.
        argon2_parallelism: u32 = 1,
        /// Longest password accepted, in bytes.
        max_password_length: usize = 4096,
        /// Password hashes computed or verified at once (each Argon2id run
        /// takes `argon2_memory_kib`); more wait up to
        /// `password_check_wait_ms`, then get 503 with Retry-After.
        max_concurrent_password_checks: usize = 4,
        /// How long a password check waits for its turn, in milliseconds.
        password_check_wait_ms: u64 = 2000,
    }
}

section! {
    /// Image service: where image data lives and how big it may be.
    Image, "image" {
        /// Folder holding image data, one file per image (created when missing).
        store_dir: String = "/var/lib/mica/images".into(),
        /// Largest image accepted, in bytes; bigger uploads answer 413.
        max_image_size_bytes: u64 = 1 << 40,
        /// Images per page when the request gives no `limit`.
        default_page_size: u32 = 25,
        /// Largest `limit` honoured; bigger ones are capped.
        max_page_size: u32 = 1000,
        /// Most extra properties per image.
        max_properties: u32 = 128,
        /// Most tags per image.
        max_tags: u32 = 128,
    }
}

section! {
    /// Placement: resource providers, inventories and allocation candidates.
    Placement, "placement" {
        /// Shuffle allocation candidates instead of returning them in provider
        /// order (spreads concurrent schedulers across hosts).
        randomize_allocation_candidates: bool = false,
        /// Most allocation candidates computed per request; -1 for no limit.
        max_allocation_candidates: i64 = -1,
    }
}

section! {
    /// The scheduler role (`nova-scheduler`'s `[scheduler]`).
    Scheduler, "scheduler" {
        /// Hosts tried for one build before the instance goes to ERROR.
        max_attempts: u32 = 3,
        /// Most allocation candidates asked of placement per request (when
        /// `host_state_cache` is off).
        max_placement_results: u32 = 1000,
        /// Keep host states in memory: each decision reads only the providers
        /// that changed since the last one (claims are still checked against
        /// the database, so a stale view costs a retry, never an overcommit).
        /// Off: every decision asks placement for its candidates.
        host_state_cache: bool = true,
        /// Milliseconds between two reads of what changes slowly about hosts
        /// (services and heartbeats, aggregates, hypervisors, instance counts).
        host_info_refresh_ms: u64 = 1000,
        /// Seconds between two full reloads of the host-state cache.
        /// (When a host is down and the default availability zone are
        /// `[compute]`'s, shared with the API.)
        full_refresh_secs: u64 = 30,
    }
}

section! {
    /// The filter scheduler (`nova-scheduler`'s `[filter_scheduler]`).
    FilterScheduler, "filter_scheduler" {
        /// Filters run, in order, on the placement candidates.
        enabled_filters: Vec<String> = vec![
            "ComputeFilter".into(),
            "AvailabilityZoneFilter".into(),
            "ComputeCapabilitiesFilter".into(),
            "ImagePropertiesFilter".into(),
            "ServerGroupAntiAffinityFilter".into(),
            "ServerGroupAffinityFilter".into(),
        ],
        /// Pick at random among this many best-weighed hosts.
        host_subset_size: u32 = 1,
        /// RAM weigher multiplier (positive spreads, negative packs).
        ram_weight_multiplier: f64 = 1.0,
        /// CPU weigher multiplier (positive spreads, negative packs).
        cpu_weight_multiplier: f64 = 1.0,
        /// Disk weigher multiplier (positive spreads, negative packs).
        disk_weight_multiplier: f64 = 1.0,
        /// Instance-count weigher multiplier (positive prefers busy hosts).
        num_instances_weight_multiplier: f64 = 0.0,
        /// Build-failure weigher multiplier (hosts with recent failures sink).
        build_failure_weight_multiplier: f64 = 1000000.0,
        /// Weighers run (Nova's `weight_classes`): RAMWeigher, CPUWeigher,
        /// DiskWeigher, NumInstancesWeigher, BuildFailureWeigher.
        weighers: Vec<String> = vec![
            "RAMWeigher".into(),
            "CPUWeigher".into(),
            "DiskWeigher".into(),
            "NumInstancesWeigher".into(),
            "BuildFailureWeigher".into(),
        ],
    }
}

section! {
    /// The conductor role: sagas and what it does for agents.
    Conductor, "conductor" {
        /// Seconds a conductor's claim on a saga lasts without renewal; a
        /// crashed conductor's sagas are adopted once it has run out.
        saga_lease_secs: u64 = 20,
        /// Milliseconds between two looks for agent reports received by
        /// another conductor replica.
        signal_poll_ms: u64 = 200,
        /// Sagas a conductor runs at once (those only waiting for an agent do
        /// not count); more queue. Keep it near `[database] max_connections`.
        saga_concurrency: u32 = 16,
        /// Seconds a build waits for its agent's report before trying another
        /// host (0: wait for as long as the host is up).
        build_timeout_secs: u64 = 600,
        /// Seconds an instance action (stop, reboot, delete, …) waits for its
        /// agent's report before giving up and clearing the task state.
        action_timeout_secs: u64 = 300,
        /// Seconds a guest gets to shut down before a hard stop.
        shutdown_timeout_secs: u64 = 60,
        /// Seconds after which a task state with no saga behind it is reset.
        stale_task_state_secs: u64 = 600,
        /// Seconds between two runs of the conductor's periodic tasks.
        periodic_interval_secs: u64 = 60,
        /// Seconds between heartbeats asked of agents at registration.
        report_interval_secs: u64 = 10,
        /// Seconds finished sagas and their logs are kept.
        saga_retention_secs: u64 = 86400,
        /// Lifetime of the image download token given to an agent with a build.
        image_token_secs: i64 = 3600,
    }
}

section! {
    /// Default quotas per project (Nova's defaults), for the compute API.
    Quota, "quota" {
        /// Instances.
        instances: i64 = 10,
        /// Instance cores (vCPUs).
        cores: i64 = 20,
        /// Instance RAM in MiB.
        ram: i64 = 51200,
        /// Metadata items per instance.
        metadata_items: i64 = 128,
        /// Injected files per instance.
        injected_files: i64 = 5,
        /// Bytes per injected file.
        injected_file_content_bytes: i64 = 10240,
        /// Length of an injected file's path.
        injected_file_path_length: i64 = 255,
        /// Key pairs per user.
        key_pairs: i64 = 100,
        /// Server groups.
        server_groups: i64 = 10,
        /// Members per server group.
        server_group_members: i64 = 10,
    }
}

section! {
    /// The compute API (nova-api's `[api]` and `DEFAULT` options).
    Compute, "compute" {
        /// Most items a list returns per page (nova's `[api] max_limit`); a
        /// bigger `limit` is capped.
        max_limit: i64 = 1000,
        /// The availability zone of hosts in no zone-naming aggregate, and of
        /// servers that ask for none (nova's `default_availability_zone`).
        default_availability_zone: String = "nova".into(),
        /// A compute service is down when its last heartbeat is older than this
        /// many seconds (nova's `service_down_time`).
        service_down_time_secs: i64 = 60,
        /// Return a generated `adminPass` when a server is created (nova's
        /// `[api] enable_instance_password`).
        enable_instance_password: bool = true,
        /// Most instances one create request may ask for (`max_count`).
        max_instances_per_request: i64 = 1000,
    }
}

section! {
    /// The network API (a Neutron v2.0 subset) and the network bootstrap
    /// creates.
    Network, "network" {
        /// Name of the shared network `bootstrap` creates (empty: none).
        default_network_name: String = "shared".into(),
        /// Its subnet's CIDR.
        default_subnet_cidr: String = "10.0.0.0/24".into(),
        /// Its DNS servers.
        default_dns_nameservers: Vec<String> = vec![],
        /// MTU of new networks.
        default_mtu: i64 = 1500,
        /// The first three bytes of generated MAC addresses (Neutron's
        /// `base_mac`).
        base_mac: String = "fa:16:3e".into(),
        /// Default quota: networks per project (-1: unlimited).
        quota_network: i64 = 100,
        /// Default quota: subnets per project.
        quota_subnet: i64 = 100,
        /// Default quota: ports per project.
        quota_port: i64 = 500,
        /// Default quota: security groups per project.
        quota_security_group: i64 = 10,
        /// Default quota: security group rules per project.
        quota_security_group_rule: i64 = 100,
    }
}

section! {
    /// Remote consoles: the tokens the compute API hands out and the console
    /// proxy role (`console-proxy`) that checks them. The proxy listens on
    /// `[api] console_proxy_listen` and is reached at `[api]
    /// console_proxy_public_url` (default `http://<public_host>:<port>`).
    Console, "console" {
        /// Serve remote consoles; off: `remote-consoles` and the
        /// `os-get*Console` actions answer 501.
        enabled: bool = true,
        /// Seconds a console token stays valid (Nova's
        /// `[consoleauth] token_ttl`).
        token_ttl_secs: i64 = 600,
        /// The noVNC page URLs hand out, `?path=%3Ftoken%3D<token>` appended
        /// (Nova's `novncproxy_base_url`). Empty:
        /// `<console proxy public URL>/vnc_lite.html`.
        novnc_base_url: String = String::new(),
        /// The WebSocket URL serial consoles hand out, `?token=<token>`
        /// appended (Nova's `[serial_console] base_url`). Empty: the console
        /// proxy's public URL as `ws://…/` (`wss://` for `https://`).
        serial_base_url: String = String::new(),
        /// Folder of the noVNC web client the proxy serves (`vnc.html`,
        /// `vnc_lite.html`, `app/`, `core/`, …). Empty: `novnc` in
        /// `$MICA_CACHE`, else `$HOME/.cache/mica/novnc` (where `make setup`
        /// installs it).
        novnc_dir: String = String::new(),
        /// Seconds the proxy waits for a compute host to open a console.
        connect_timeout_secs: u64 = 10,
        /// Origins (`host` or `host:port`) whose pages may open consoles
        /// besides the proxy's own (Nova's
        /// `[console] allowed_origins`): a browser's WebSocket from any other
        /// origin is refused, so a page elsewhere cannot use a console token
        /// cookie.
        allowed_origins: Vec<String> = vec![],
    }
}

section! {
    /// The metadata service (the `metadata` role, on `[api]
    /// metadata_listen`): what a guest reads at 169.254.169.254 through its
    /// compute host's metadata proxy, which names the instance in a header
    /// signed with the shared secret (Neutron's and Nova's scheme).
    Metadata, "metadata" {
        /// The secret the compute hosts' proxies sign instance ids with
        /// (Nova's `[neutron] metadata_proxy_shared_secret`); the same
        /// value goes into every agent's `[metadata] shared_secret`. The
        /// role does not start without one.
        shared_secret: String = String::new(),
        /// Let a guest post its (encrypted) password once, for
        /// os-server-password (Nova's `[api] enable_instance_password`).
        enable_instance_password: bool = true,
        /// Largest password a guest may post, in bytes.
        max_password_bytes: usize = 256,
        /// Seconds an instance's metadata is served from memory before it
        /// is read again (Nova's `[api] metadata_cache_expiration`): guests
        /// ask often, and cloud-init asks for many paths at boot. 0: read
        /// the database every time. The password is never cached.
        cache_expiration_secs: u64 = 15,
    }
}

section! {
    /// What `mica-controller bootstrap` creates: the admin user and project,
    /// the roles, and the service catalog.
    Bootstrap, "bootstrap" {
        /// The admin user's name.
        admin_user: String = "admin".into(),
        /// The admin user's password; required by `bootstrap` (better given as
        /// `MICA_BOOTSTRAP_ADMIN_PASSWORD` than written here).
        admin_password: String = String::new(),
        /// The admin project's name.
        admin_project: String = "admin".into(),
    }
}

section! {
    /// Logging.
    Log, "log" {
        /// Log filter in `tracing` syntax (`info`, `mica_controller=debug,sqlx=warn`);
        /// `RUST_LOG` overrides it.
        level: String = "info,sqlx=warn".into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[database]`
    pub database: Database,
    /// `[messaging]`
    pub messaging: Messaging,
    /// `[api]`
    pub api: Api,
    /// `[identity]`
    pub identity: Identity,
    /// `[image]`
    pub image: Image,
    /// `[placement]`
    pub placement: Placement,
    /// `[scheduler]`
    pub scheduler: Scheduler,
    /// `[filter_scheduler]`
    pub filter_scheduler: FilterScheduler,
    /// `[conductor]`
    pub conductor: Conductor,
    /// `[quota]`
    pub quota: Quota,
    /// `[compute]`
    pub compute: Compute,
    /// `[network]`
    pub network: Network,
    /// `[console]`
    pub console: Console,
    /// `[metadata]`
    pub metadata: Metadata,
    /// `[bootstrap]`
    pub bootstrap: Bootstrap,
    /// `[log]`
    pub log: Log,
    /// `[policy]`: rule name → rule expression, replacing built-in defaults.
    pub policy: BTreeMap<String, String>,
}

/// The default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/mica/controller.toml";

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file or an override is not valid TOML or has unknown keys.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Documentation of every section and key, in file order.
    pub fn describe() -> Vec<SectionDoc> {
        vec![
            Database::describe(),
            Messaging::describe(),
            Api::describe(),
            Identity::describe(),
            Image::describe(),
            Placement::describe(),
            Scheduler::describe(),
            FilterScheduler::describe(),
            Conductor::describe(),
            Quota::describe(),
            Compute::describe(),
            Network::describe(),
            Console::describe(),
            Metadata::describe(),
            Bootstrap::describe(),
            Log::describe(),
        ]
    }

    /// The default configuration as a commented TOML file.
    pub fn defaults_toml() -> String {
        let mut out = String::from(
            "# mica-controller configuration: every key with its default.\n\
             # Generated by `mica-controller config defaults`; the default path is\n\
             # /etc/mica/controller.toml. Environment variables MICA_<SECTION>_<KEY>\n\
             # and `--set section.key=value` override the file.\n",
        );
        for section in Self::describe() {
            out.push('\n');
            for line in section.doc.lines() {
                out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
            }
            out.push_str(&format!("[{}]\n", section.name));
            for key in section.keys {
                for line in key.doc.lines() {
                    out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
                }
                out.push_str(&format!("{} = {}\n", key.name, key.default));
            }
        }
        out.push_str(
            "\n# Policy overrides: rule name = rule expression (see `mica-controller policy\n\
             # defaults` for the rules and their defaults).\n[policy]\n",
        );
        out
    }

    /// Loads the configuration: the file at `path` (or the default path, where
    /// a missing file means defaults), then environment, then `overrides`
    /// (`section.key=value`).
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(p) => read_table(p)?,
            None => {
                let p = Path::new(DEFAULT_PATH);
                if p.exists() {
                    read_table(p)?
                } else {
                    toml::Table::new()
                }
            }
        };
        // Environment: only the documented keys, so stray MICA_* variables of
        // other programs are not misread.
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for section in Self::describe() {
            for key in &section.keys {
                let var = format!("MICA_{}_{}", section.name, key.name).to_uppercase();
                if let Some(v) = env.get(&var) {
                    set(&mut table, section.name, key.name, v);
                }
            }
        }
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("`{o}` is not section.key=value")))?;
            let (section, key) = k.trim().split_once('.').ok_or_else(|| {
                ConfigError::Invalid(format!("`{k}` is not section.key (e.g. database.url)"))
            })?;
            set(&mut table, section, key, v.trim());
        }
        table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
}

fn set(table: &mut toml::Table, section: &str, key: &str, raw: &str) {
    // A value that parses as TOML is taken as such (numbers, booleans, arrays);
    // anything else is a string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_toml_parses_back_to_the_defaults() {
        let text = Config::defaults_toml();
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn every_key_is_documented() {
        for s in Config::describe() {
            assert!(!s.doc.trim().is_empty(), "[{}] has no doc", s.name);
            for k in s.keys {
                assert!(!k.doc.trim().is_empty(), "{}.{} has no doc", s.name, k.name);
            }
        }
    }

    #[test]
    fn precedence_is_file_then_env_then_cli() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[database]\nurl = \"sqlite:///file.db\"\nmax_connections = 3\n[image]\ndefault_page_size = 7\n",
        )
        .unwrap();
        let env = vec![
            ("MICA_DATABASE_MAX_CONNECTIONS".to_owned(), "4".to_owned()),
            ("MICA_IMAGE_DEFAULT_PAGE_SIZE".to_owned(), "8".to_owned()),
            ("MICA_NOT_A_KEY".to_owned(), "x".to_owned()),
        ];
        let c = Config::load(
            Some(&path),
            env,
            &[
                "image.default_page_size=9".into(),
                "database.url=postgres://u:p@h:5432/d".into(),
                "filter_scheduler.enabled_filters=[\"ComputeFilter\"]".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.database.url, "postgres://u:p@h:5432/d");
        assert_eq!(c.database.max_connections, 4);
        assert_eq!(c.image.default_page_size, 9);
        assert_eq!(c.filter_scheduler.enabled_filters, vec!["ComputeFilter"]);
        assert_eq!(c.api, Api::default());
    }

    #[test]
    fn unknown_keys_and_bad_types_are_refused() {
        let e = Config::load(Some(Path::new("/nonexistent/file.toml")), vec![], &[]);
        assert!(matches!(e, Err(ConfigError::Read { .. })));
        let e = Config::load(None, vec![], &["database.nope=1".into()]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = Config::load(None, vec![], &["database.max_connections=lots".into()]).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)), "{e}");
    }

    #[test]
    fn policy_overrides_are_free_form() {
        let c = Config::load(None, vec![], &["policy.image:add_image=role:admin".into()]).unwrap();
        assert_eq!(c.policy["image:add_image"], "role:admin");
    }
}
