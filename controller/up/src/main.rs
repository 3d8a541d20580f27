//! `mica`: the all-in-one Mica cloud. `mica up` runs every controller role
//! (identity, compute, image, placement and network APIs, the scheduler and
//! the conductor) and one compute agent in one process, on SQLite and the
//! in-process bus; see `mica up --help`.

mod cloud;
mod compute;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Mica, a compute cloud: the OpenStack compute API on microVMs.
#[derive(Parser)]
#[command(name = "mica", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the all-in-one cloud in the foreground until Ctrl-C.
    ///
    /// On first start it creates an admin user and project, a member user
    /// `demo` in a project `demo`, the flavors m1.nano, m1.tiny and m1.small,
    /// the image `tiny` (Mica's tiny guest), the shared network with DHCP and
    /// NAT and the `default` security groups, and writes the clouds `mica`
    /// (admin) and `mica-demo` (member) into clouds.yaml. Later starts on the
    /// same state folder keep everything. Ctrl-C stops every running server
    /// (as `openstack server stop` would) and then the cloud.
    Up(UpArgs),
    /// The first-start steps of `mica up` for a distributed cloud, after
    /// `mica-controller db sync` and `mica-controller bootstrap`, with the
    /// API running: the demo project and user, the flavors, the image `tiny`,
    /// the default security groups, the image API's internal endpoint, and
    /// clouds.yaml. Safe to run again.
    Init(InitArgs),
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,lapin=warn,hyper=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mica: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Up(args) => runtime.block_on(up::run(args)),
        Command::Init(args) => runtime.block_on(up::init(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mica: {e:#}");
            ExitCode::FAILURE
        }
    }
}
