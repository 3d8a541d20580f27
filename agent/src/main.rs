//! `mica-agent`: see `mica-agent --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mica_agent::config::{BackendKind, Config, DEFAULTS_TOML};
use mica_agent::{Agent, AgentOptions, SimulatedBackend, VmmBackend};
use mica_rpc::{Rpc, RpcOptions};

/// Mica's compute agent: runs instances as mica-vmm microVMs on this host,
/// as the conductor asks over RPC.
#[derive(Parser)]
#[command(name = "mica-agent", version)]
struct Cli {
    /// Configuration file (default /etc/mica/agent.toml if it exists).
    #[arg(long, env = "MICA_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// This host's name (agent.host).
    #[arg(long)]
    host: Option<String>,
    /// The state folder (agent.state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The folder of VMM sockets (agent.run_dir).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The message bus (rpc.url).
    #[arg(long)]
    rpc_url: Option<String>,
    /// `vmm` or `simulated` (agent.backend).
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Override a key: `--set section.key=value` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print every key with its default and documentation.
    Defaults,
    /// Print the effective configuration (file, then overrides).
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut overrides = cli.set.clone();
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    if let Some(h) = &cli.host {
        overrides.push(format!("agent.host={}", quote(h)));
    }
    if let Some(d) = &cli.state_dir {
        overrides.push(format!(
            "agent.state_dir={}",
            quote(&d.display().to_string())
        ));
    }
    if let Some(d) = &cli.run_dir {
        overrides.push(format!("agent.run_dir={}", quote(&d.display().to_string())));
    }
    if let Some(u) = &cli.rpc_url {
        overrides.push(format!("rpc.url={}", quote(u)));
    }
    if let Some(b) = cli.backend {
        let name = match b {
            BackendKind::Vmm => "vmm",
            BackendKind::Simulated => "simulated",
        };
        overrides.push(format!("agent.backend={}", quote(name)));
    }
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mica-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Config {
            action: ConfigAction::Defaults,
        } => {
            print!("{DEFAULTS_TOML}");
            ExitCode::SUCCESS
        }
        Command::Config {
            action: ConfigAction::Show,
        } => {
            let mut shown = config.clone();
            shown.rpc.url = redact(&shown.rpc.url);
            match toml::to_string(&shown) {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mica-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => run(config),
    }
}

/// Hides a URL's password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn run(config: Config) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.agent.log_level));
    // Colours only on a terminal: logs in files stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mica-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mica-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let options = AgentOptions::from_config(&config);
    let rpc_options = RpcOptions {
        namespace: config.rpc.namespace.clone(),
        connection_name: Some(format!("mica-agent {}", options.host)),
        queue_expiry: (config.rpc.queue_expiry_s > 0)
            .then(|| std::time::Duration::from_secs(config.rpc.queue_expiry_s)),
        ..RpcOptions::default()
    };
    let rpc = Rpc::connect_with(&config.rpc.url, rpc_options)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", redact(&config.rpc.url)))?;
    tracing::info!(host = %options.host, backend = ?config.agent.backend, rpc = %redact(&config.rpc.url), "mica-agent starting");
    let agent = match config.agent.backend {
        BackendKind::Vmm => {
            let backend = VmmBackend::new(&options.host, &config).map_err(|e| e.to_string())?;
            tracing::info!(vmm = %backend.vmm_binary().display(), kernel = %config.vmm.kernel.display(), "real microVMs");
            Agent::start(rpc, options, Arc::new(backend)).await
        }
        BackendKind::Simulated => {
            let backend = SimulatedBackend::new(&options.host, config.simulated.clone(), config.resources.clone());
            Agent::start(rpc, options, Arc::new(backend)).await
        }
    }
    .map_err(|e| e.to_string())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping (instances keep running)");
    agent.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("amqp://mica:secret@host:5672/v"),
            "amqp://mica:***@host:5672/v"
        );
        assert_eq!(redact("memory://x"), "memory://x");
    }
}
