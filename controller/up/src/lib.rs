//! `mica`: the all-in-one Mica cloud (`mica up`) and the first-start steps of
//! a distributed one (`mica init`). The binary is `src/main.rs`; the pieces
//! are here so that the end-to-end tests and the benchmark drive the same
//! code (the nested compute host, the API client).

pub mod cloud;
pub mod compute;
pub mod up;

use std::path::PathBuf;

use clap::ValueEnum;

/// `mica init`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// The identity API (e.g. http://ctl:5000/v3).
    #[arg(long)]
    pub identity_url: String,
    /// The admin user's password (as given to `mica-controller bootstrap`).
    #[arg(long, env = "MICA_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: String,
    /// The password the user `demo` gets.
    #[arg(long, env = "MICA_DEMO_PASSWORD", hide_env_values = true)]
    pub demo_password: String,
    /// The image API's URL as compute hosts reach it (its internal
    /// endpoint), when not the public one.
    #[arg(long)]
    pub image_internal_url: Option<String>,
    /// Where to write the clouds `mica` and `mica-demo`.
    #[arg(long)]
    pub clouds_yaml: PathBuf,
}

/// Where the compute host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ComputeMode {
    /// `local` when this machine's KVM runs Linux guests, else `nested`.
    Auto,
    /// The agent in this process, microVMs on this machine's /dev/kvm.
    Local,
    /// The agent inside the nested test host (a QEMU guest with a KVM of its
    /// own), reached over RabbitMQ; for machines whose /dev/kvm is a software
    /// hypervisor that cannot run Linux guests.
    Nested,
}

/// `mica up`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// The state folder (database, images, instances, passwords).
    #[arg(long, env = "MICA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The clouds.yaml to write the clouds `mica` and `mica-demo` into
    /// (default ~/.config/openstack/clouds.yaml; a file that Mica did not
    /// write is left alone and the clouds go to <state-dir>/clouds.yaml).
    #[arg(long)]
    pub clouds_yaml: Option<PathBuf>,
    /// Where the compute host runs.
    #[arg(long, value_enum, default_value_t = ComputeMode::Auto)]
    pub compute: ComputeMode,
    /// Memory of the nested compute host, in MiB.
    #[arg(long, default_value_t = 6144)]
    pub nested_memory_mib: u32,
    /// RabbitMQ for the nested compute host's agent (the host's loopback,
    /// as this machine sees it).
    #[arg(long, default_value = "amqp://mica:mica@127.0.0.1:5672/mica")]
    pub nested_amqp_url: String,
    /// Override a setting of the compute host's agent: `--agent-set
    /// section.key=value` (repeatable; see `mica-agent config defaults`),
    /// e.g. `resources.cpu_allocation_ratio=16`.
    #[arg(long = "agent-set", value_name = "SECTION.KEY=VALUE")]
    pub agent_set: Vec<String>,
    /// Override a controller setting: `--set section.key=value`
    /// (repeatable; see `mica-controller config defaults`).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}
