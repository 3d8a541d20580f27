//! `mica up`: the controller roles, first-start setup, one compute host, and a
//! clean stop on Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mica_controller::app::{App, ServiceKind, identity};
use mica_controller::config::Config;
use mica_controller::db::Db;
use mica_controller::server::{self, Server};
use serde_json::{Value, json};

use crate::cloud::{self, Cloud};
use crate::compute::{self, ComputeHost};
use crate::{ComputeMode, InitArgs, UpArgs};

/// What `mica up` keeps in its state folder besides the database: the
/// passwords it made and the bus namespace of its nested compute host.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub admin_password: String,
    pub demo_password: String,
    pub namespace: String,
    /// `[metadata] shared_secret`: the compute host's metadata proxy signs
    /// with it.
    pub metadata_secret: String,
}

impl Secrets {
    fn load_or_create(state: &Path) -> Result<Secrets> {
        let path = state.join("secrets.json");
        let saved: Option<Value> = match std::fs::read_to_string(&path) {
            Ok(text) => Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", path.display()))?,
            ),
            Err(_) => None,
        };
        let get = |k: &str| {
            saved
                .as_ref()
                .and_then(|v| v[k].as_str().map(str::to_owned))
        };
        if let Some(v) = &saved {
            for k in ["admin_password", "demo_password", "namespace"] {
                if v[k].as_str().is_none() {
                    bail!("{} has no {k}", path.display());
                }
            }
        }
        let s = Secrets {
            admin_password: get("admin_password").map_or_else(|| random_alphanumeric(20), Ok)?,
            demo_password: get("demo_password").map_or_else(|| random_alphanumeric(20), Ok)?,
            namespace: match get("namespace") {
                Some(n) => n,
                None => format!("mica-up-{}", random_alphanumeric(8)?.to_lowercase()),
            },
            // (Made for a state folder from before the metadata service.)
            metadata_secret: get("metadata_secret").map_or_else(|| random_alphanumeric(32), Ok)?,
        };
        let complete = get("metadata_secret").is_some();
        if !complete {
            let text = serde_json::to_string_pretty(&json!({
                "admin_password": s.admin_password,
                "demo_password": s.demo_password,
                "namespace": s.namespace,
                "metadata_secret": s.metadata_secret,
            }))?;
            write_private(&path, &text)?;
        }
        Ok(s)
    }
}

/// `len` characters of `[A-Za-z0-9]` from the OS CSPRNG, each uniform
/// (bytes above the largest multiple of 62 are drawn again): about 5.95
/// bits each, 119 bits for a 20-character password.
pub fn random_alphanumeric(len: usize) -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let limit = 256 - 256 % ALPHABET.len();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("the OS random source: {e}"))?;
        for b in buf {
            if (b as usize) < limit && out.len() < len {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn default_state_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    std::env::var_os("XDG_DATA_HOME")
        .map_or_else(|| home.join(".local/share"), PathBuf::from)
        .join("mica")
}

/// Runs the all-in-one cloud until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> Result<()> {
    let started = Instant::now();
    let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating the state folder {}", state.display()))?;
    let state = state.canonicalize()?;
    let secrets = Secrets::load_or_create(&state)?;

    // Where guests run.
    let mode = match args.compute {
        ComputeMode::Auto => match compute::probe_kvm() {
            compute::Kvm::Hardware => ComputeMode::Local,
            compute::Kvm::Software(why) => {
                tracing::warn!(
                    "this machine's /dev/kvm cannot run Linux guests ({why}); \
                     the compute host runs inside the nested test host"
                );
                ComputeMode::Nested
            }
            compute::Kvm::Missing(why) => bail!(
                "no usable KVM on this machine ({why}); Mica runs guests on KVM \
                 (load kvm_intel or kvm_amd, or use --compute nested)"
            ),
        },
        m => m,
    };
    tracing::info!(state = %state.display(), compute = ?mode, "mica up starting");
    check_programs(mode)?;

    // The controller: every role, on SQLite and (with a local agent) the
    // in-process bus; the nested agent needs RabbitMQ to reach it.
    let transport = match mode {
        ComputeMode::Nested => args.nested_amqp_url.clone(),
        _ => "memory://mica-up".to_owned(),
    };
    let mut sets = vec![
        format!(
            "database.url=\"sqlite://{}\"",
            state.join("mica.db").display()
        ),
        format!("image.store_dir=\"{}\"", state.join("images").display()),
        format!("messaging.transport_url=\"{transport}\""),
        format!("messaging.namespace=\"{}\"", secrets.namespace),
        format!("bootstrap.admin_password=\"{}\"", secrets.admin_password),
        format!("metadata.shared_secret=\"{}\"", secrets.metadata_secret),
    ];
    for (key, port) in [
        ("identity_listen", 5000),
        ("compute_listen", 8774),
        ("image_listen", 9292),
        ("placement_listen", 8778),
        ("network_listen", 9696),
        ("console_proxy_listen", 6080),
        ("metadata_listen", 8775),
    ] {
        sets.push(format!("api.{key}=\"127.0.0.1:{port}\""));
    }
    // Agents report every 10 s; the servers' power state is checked often.
    sets.extend(args.set.iter().cloned());
    let config = Config::load(None, std::iter::empty(), &sets)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let config = Arc::new(config);
    let db = Db::connect(&config.database)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.migrate().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = Arc::new(App::new(db.clone(), config.clone()).map_err(|e| anyhow::anyhow!("{e}"))?);
    app.connect_rpc().await.map_err(|e| {
        anyhow::anyhow!(
            "{e}: is RabbitMQ running ({})?",
            mica_controller::db::redact_url(&transport)
        )
    })?;
    mica_controller::app::images::recover_interrupted_uploads(&app)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listeners = server::bind(&config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let http = Server::start(app.clone(), listeners).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rpc = mica_controller::roles::connect(&app, "mica up")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let options = mica_controller::conductor::ConductorOptions::from_config(&app);
    let workers =
        mica_controller::roles::Workers::start(app.clone(), rpc.clone(), true, true, options)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;

    // First start (or catching up): identity, catalog, network.
    let report = identity::bootstrap(&app, &secrets.admin_password, &server::public_urls(&config))
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap: {e}"))?;
    mica_controller::app::network::bootstrap_default_network(&app, &report.admin_project_id)
        .await
        .map_err(|e| anyhow::anyhow!("the default network: {e}"))?;
    let identity_url = public_url(&config, ServiceKind::Identity);
    let cloud = Cloud::login(&identity_url, "admin", &secrets.admin_password, "admin").await?;
    let image_internal = match mode {
        ComputeMode::Nested => Some(format!(
            "http://{}:{}",
            mica_tests::nested::HOST_FROM_L1,
            compute::port_of(&config.api.image_listen)?
        )),
        _ => None,
    };
    cloud::first_start(&cloud, &secrets.demo_password, image_internal.as_deref()).await?;

    // The compute host.
    let host = ComputeHost::start(mode, &args, &state, &secrets, &config, rpc.clone()).await?;
    host.wait_registered(&cloud, Duration::from_secs(120))
        .await?;
    std::fs::write(
        state.join("compute.json"),
        serde_json::to_string_pretty(&host.describe())?,
    )?;

    let clouds = cloud::write_clouds_yaml(
        args.clouds_yaml.as_deref(),
        &state,
        &identity_url,
        &secrets.admin_password,
        &secrets.demo_password,
    )?;
    println!(
        "\nMica is up ({:.1} s): identity {identity_url}, compute host {} ({}).\n\
         \n  export OS_CLIENT_CONFIG_FILE={}   # clouds `mica` (admin) and `mica-demo` (member)\n  \
         openstack --os-cloud mica-demo server create --flavor m1.nano --image tiny --wait demo\n  \
         openstack --os-cloud mica-demo console log show demo\n\
         \nState: {}. Ctrl-C stops every running server, then Mica.\n",
        started.elapsed().as_secs_f64(),
        host.name(),
        host.mode_text(),
        clouds.display(),
        state.display(),
    );
    // The line a script waits for.
    println!("mica up: ready");

    shutdown_signal().await;
    tracing::info!("stopping: every running server first");
    match cloud.stop_all_servers(Duration::from_secs(120)).await {
        Ok(n) => tracing::info!(servers = n, "servers stopped"),
        Err(e) => tracing::error!("stopping the servers: {e:#}"),
    }
    host.stop().await;
    workers.shutdown().await;
    http.shutdown(Duration::from_secs(5)).await;
    db.close().await;
    tracing::info!("mica up stopped");
    Ok(())
}

/// Every program `mica up` and its compute host will run, checked before
/// anything starts: a missing one is named with its Debian package. (The
/// nested compute host's L1 shares this machine's files, so the agent's
/// programs are checked here in both modes; the agent checks them again.)
fn check_programs(mode: ComputeMode) -> Result<()> {
    use mica_agent::programs::{self, Program};
    let mut needed = vec![Program::new(
        "qemu-img",
        "qemu-utils",
        "the first start's guest image",
    )];
    if mode == ComputeMode::Nested {
        needed.push(Program::new(
            "qemu-system-x86_64",
            "qemu-system-x86",
            "the nested compute host",
        ));
    }
    for p in programs::agent_programs("qemu-img", "dnsmasq") {
        if !needed.iter().any(|n| n.name == p.name) {
            needed.push(p);
        }
    }
    programs::check(&needed).map_err(|e| anyhow::anyhow!("mica up cannot start: {e}"))
}

/// The public URL of one API.
pub fn public_url(config: &Config, kind: ServiceKind) -> String {
    server::public_urls(config)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, u)| u)
        .expect("every API has a public URL")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `mica init`: the first-start steps against a running distributed cloud.
pub async fn init(args: InitArgs) -> Result<()> {
    let identity = args.identity_url.trim_end_matches('/').to_owned();
    let cloud = Cloud::login(&identity, "admin", &args.admin_password, "admin").await?;
    cloud::first_start(
        &cloud,
        &args.demo_password,
        args.image_internal_url.as_deref(),
    )
    .await?;
    let dir = args
        .clouds_yaml
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let path = cloud::write_clouds_yaml(
        Some(&args.clouds_yaml),
        &dir,
        &identity,
        &args.admin_password,
        &args.demo_password,
    )?;
    println!(
        "mica init: done; clouds `mica` and `mica-demo` in {}",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_alphanumeric_is_long_uniform_and_fresh() {
        let a = random_alphanumeric(20).unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, random_alphanumeric(20).unwrap());
        // Every character of the alphabet shows up, none dominates.
        let many = random_alphanumeric(62 * 200).unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for c in many.chars() {
            *counts.entry(c).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 62);
        assert!(
            counts.values().all(|n| (100..=320).contains(n)),
            "{counts:?}"
        );
    }
}
