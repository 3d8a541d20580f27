//! `mica`: the all-in-one Mica cloud. `mica up` runs every controller role
//! (identity, compute, image, placement and network APIs, the scheduler and
//! the conductor) and one compute agent in one process, on SQLite and the
//! in-process bus; see `mica up --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mica::{InitArgs, UpArgs, up};

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
