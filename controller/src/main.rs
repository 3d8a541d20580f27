//! `mica-controller`: see `mica-controller --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mica_controller::app::{App, identity};
use mica_controller::config::Config;
use mica_controller::db::{Db, redact_url};
use mica_controller::policy::Policy;
use mica_controller::server;

/// Mica's controller: the OpenStack APIs, scheduler and conductor.
#[derive(Parser)]
#[command(
    name = "mica-controller",
    version,
    after_help = "ROLES (run one or more: `mica-controller api`, `mica-controller all`):\n  \
        api            the HTTP APIs (identity, compute, image, placement, network)\n  \
        scheduler      placement candidates, filters and weighers (the `scheduler` topic)\n  \
        conductor      builds and instance actions as persisted sagas (the `conductor` topic)\n  \
        console-proxy  noVNC and serial consoles over WebSocket ([api] console_proxy_listen)\n  \
        metadata       what guests read at 169.254.169.254 via their host's proxy ([api] metadata_listen)\n  \
        all            every implemented role, migrations applied at start"
)]
struct Cli {
    /// Configuration file (default /etc/mica/controller.toml if it exists).
    #[arg(long, global = true, env = "MICA_CONFIG")]
    config: Option<PathBuf>,
    /// Override a key: `--set section.key=value` (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Database administration.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Create the admin user and project, the roles and the service catalog.
    Bootstrap {
        /// The admin password (else [bootstrap] admin_password).
        #[arg(long, env = "MICA_BOOTSTRAP_ADMIN_PASSWORD", hide_env_values = true)]
        admin_password: Option<String>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Policy helpers.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Write the OpenAPI documents into a folder.
    Openapi {
        /// Where to write identity.json, image.json, placement.json.
        dir: PathBuf,
    },
    /// Run roles: api, scheduler, conductor, console-proxy, metadata, all.
    #[command(external_subcommand)]
    Roles(Vec<String>),
}

#[derive(Subcommand)]
enum DbAction {
    /// Apply the migrations that are not applied yet.
    Sync,
    /// List the migrations this binary knows.
    Version,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print every key with its default and documentation.
    Defaults,
    /// Print the effective configuration (file, environment, --set).
    Show,
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Print every policy rule with its default.
    Defaults,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &cli.set) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mica-controller: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
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
            eprintln!("mica-controller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mica-controller: {e}");
            if let Some(src) = std::error::Error::source(&e) {
                eprintln!("  caused by: {src}");
            }
            if e.kind == mica_controller::Kind::NotImplemented {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn dispatch(cmd: Command, config: Config) -> mica_controller::Result<()> {
    match cmd {
        Command::Db { action } => {
            let db = Db::connect(&config.database).await?;
            match action {
                DbAction::Sync => {
                    db.migrate().await?;
                    println!(
                        "database {} is up to date",
                        redact_url(&config.database.url)
                    );
                }
                DbAction::Version => {
                    for (v, d) in db.known_migrations() {
                        println!("{v} {d}");
                    }
                }
            }
            db.close().await;
            Ok(())
        }
        Command::Bootstrap { admin_password } => {
            let password =
                admin_password.unwrap_or_else(|| config.bootstrap.admin_password.clone());
            let config = Arc::new(config);
            let db = Db::connect(&config.database).await?;
            server::check_migrated(&db).await?;
            let app = App::new(db.clone(), config.clone())?;
            let report =
                identity::bootstrap(&app, &password, &server::public_urls(&config)).await?;
            println!(
                "admin user {} ({})",
                config.bootstrap.admin_user, report.admin_user_id
            );
            println!(
                "admin project {} ({})",
                config.bootstrap.admin_project, report.admin_project_id
            );
            for (kind, url) in report.endpoints {
                println!("catalog: {kind} {url}");
            }
            if let Some(net) = mica_controller::app::network::bootstrap_default_network(
                &app,
                &report.admin_project_id,
            )
            .await?
            {
                println!(
                    "network: {} ({net}), shared",
                    config.network.default_network_name
                );
            }
            db.close().await;
            Ok(())
        }
        Command::Config { action } => {
            match action {
                ConfigAction::Defaults => print!("{}", Config::defaults_toml()),
                ConfigAction::Show => {
                    let mut shown = config.clone();
                    shown.database.url = redact_url(&shown.database.url);
                    if !shown.bootstrap.admin_password.is_empty() {
                        shown.bootstrap.admin_password = "***".into();
                    }
                    print!(
                        "{}",
                        toml::to_string(&shown).map_err(|e| mica_controller::Error::internal(
                            "printing the configuration",
                            e
                        ))?
                    );
                }
            }
            Ok(())
        }
        Command::Policy {
            action: PolicyAction::Defaults,
        } => {
            print!("{}", Policy::defaults_toml());
            Ok(())
        }
        Command::Openapi { dir } => {
            mica_controller::api::openapi::write_all(&dir)?;
            println!("wrote OpenAPI documents to {}", dir.display());
            Ok(())
        }
        Command::Roles(names) => server::run(config, &names).await,
    }
}
