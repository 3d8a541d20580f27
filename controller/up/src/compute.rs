//! The compute host of `mica up`: the agent in this process on this machine's
//! KVM, or — where this machine's /dev/kvm cannot run Linux guests — the real
//! `mica-agent` inside the nested test host (a QEMU guest with a KVM of its
//! own), talking to the controller over RabbitMQ.

use std::io::{BufRead as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mica_agent::{Agent, AgentOptions, VmmBackend};
use mica_controller::config::Config as ControllerConfig;
use mica_rpc::{Rpc, RpcOptions};
use mica_tests::nested::{HOST_FROM_L1, NestedHost, NestedOptions};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cloud::Cloud;
use crate::up::Secrets;
use crate::{ComputeMode, UpArgs};

/// What this machine's KVM can do.
pub enum Kvm {
    /// Hardware virtualization: Linux guests run.
    Hardware,
    /// A software hypervisor (e.g. PVM): the KVM ioctls work but a Linux
    /// guest's kernel does not run.
    Software(String),
    /// No KVM.
    Missing(String),
}

/// Looks at /dev/kvm and what provides it.
pub fn probe_kvm() -> Kvm {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Kvm::Missing(format!("/dev/kvm: {e}"));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Kvm::Software("it is provided by kvm_pvm, a software hypervisor".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return Kvm::Software("the CPU has neither vmx nor svm".into());
    }
    Kvm::Hardware
}

/// A folder next to this executable (where `cargo build` puts the workspace's
/// binaries).
fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it (`cargo build --release -p {name}`, or `make run`)",
            path.display()
        );
    }
    Ok(path)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The running compute host.
pub enum ComputeHost {
    Local {
        name: String,
        agent: Agent,
    },
    Nested {
        name: String,
        host: Box<NestedHost>,
        stop_log: Arc<AtomicBool>,
        /// Where the agent's state (instance disks, image cache, records)
        /// is kept while the nested host is down.
        saved: PathBuf,
    },
}

impl ComputeHost {
    /// Starts the agent of `mode` (`Local` or `Nested`).
    pub async fn start(
        mode: ComputeMode,
        args: &UpArgs,
        state: &Path,
        secrets: &Secrets,
        controller: &ControllerConfig,
        rpc: Rpc,
    ) -> Result<ComputeHost> {
        let kernel = mica_tests::artifacts::GuestKernel::locate()
            .context("Mica's guest kernel (run `make setup`)")?
            .vmlinux();
        let vmm = sibling_binary("mica-vmm")?;
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        match mode {
            ComputeMode::Nested => {
                let name = format!("{}-nested", host_name());
                let agent_bin = sibling_binary("mica-agent")?;
                let amqp = args
                    .nested_amqp_url
                    .replace("@127.0.0.1:", &format!("@{HOST_FROM_L1}:"))
                    .replace("@localhost:", &format!("@{HOST_FROM_L1}:"));
                let amqp_port = args
                    .nested_amqp_url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(5672u16);
                let image_port: u16 = controller
                    .api
                    .image_listen
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .context("[api] image_listen has no port")?;
                let agent_toml = format!(
                    "[agent]\nhost = {host}\nstate_dir = \"/var/lib/mica\"\nrun_dir = \"/run/mica\"\n\
                     report_interval_s = 10\nsync_power_state_interval_s = 60\n\
                     log_level = \"info\"\n\n\
                     [rpc]\nurl = {amqp}\nnamespace = {ns}\n\n\
                     [vmm]\nbinary = {vmm}\nkernel = {kernel}\n\
                     cmdline = \"console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet\"\n\
                     # L1's KVM (in QEMU's software CPU) cannot give guests XSAVE.\n\
                     extra_cmdline = \"noxsave\"\nshutdown_timeout_s = 30\nstart_timeout_s = 60\n\n\
                     [resources]\nreserved_host_memory_mb = 384\n\
                     # L1's disk is memory (a tmpfs of half its size) and root disks\n\
                     # are sparse copies: overcommit it as thin provisioning would.\n\
                     disk_allocation_ratio = 20.0\n",
                    host = quote(&name),
                    amqp = quote(&amqp),
                    ns = quote(&secrets.namespace),
                    vmm = quote(&vmm.display().to_string()),
                    kernel = quote(&kernel.display().to_string()),
                );
                let memory = args.nested_memory_mib;
                let agent_bin2 = agent_bin.clone();
                let agent_sets = args.agent_set.clone();
                let saved = state.join("nested-compute.tar");
                let saved2 = saved.clone();
                let (host, log) = tokio::task::spawn_blocking(move || {
                    boot_nested(
                        memory,
                        vec![amqp_port, image_port],
                        &agent_toml,
                        &agent_bin2,
                        &agent_sets,
                        &saved2,
                    )
                })
                .await??;
                let stop_log = Arc::new(AtomicBool::new(false));
                follow_log(log, stop_log.clone());
                Ok(ComputeHost::Nested {
                    name,
                    host: Box::new(host),
                    stop_log,
                    saved,
                })
            }
            _ => {
                let name = host_name();
                let overrides = vec![
                    format!("agent.host={}", quote(&name)),
                    format!(
                        "agent.state_dir={}",
                        quote(&state.join("compute").display().to_string())
                    ),
                    format!(
                        "agent.run_dir={}",
                        quote(&state.join("run").display().to_string())
                    ),
                    format!("rpc.url={}", quote(&controller.messaging.transport_url)),
                    format!("rpc.namespace={}", quote(&secrets.namespace)),
                    format!("vmm.binary={}", quote(&vmm.display().to_string())),
                    format!("vmm.kernel={}", quote(&kernel.display().to_string())),
                ];
                let overrides = [overrides, args.agent_set.clone()].concat();
                let config = mica_agent::config::Config::parse("", "mica up", &overrides)
                    .map_err(|e| anyhow::anyhow!("the agent's configuration: {e}"))?;
                let options = AgentOptions::from_config(&config);
                let agent_rpc = if controller.messaging.transport_url.starts_with("memory:") {
                    rpc
                } else {
                    Rpc::connect_with(
                        &config.rpc.url,
                        RpcOptions {
                            namespace: secrets.namespace.clone(),
                            connection_name: Some(format!("mica-agent {name}")),
                            ..RpcOptions::default()
                        },
                    )
                    .await?
                };
                let backend =
                    VmmBackend::new(&options.host, &config).map_err(|e| anyhow::anyhow!("{e}"))?;
                let agent = Agent::start(agent_rpc, options, Arc::new(backend))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(ComputeHost::Local { name, agent })
            }
        }
    }

    /// The host name the agent serves.
    pub fn name(&self) -> &str {
        match self {
            ComputeHost::Local { name, .. } | ComputeHost::Nested { name, .. } => name,
        }
    }

    /// Says where guests run.
    pub fn mode_text(&self) -> &'static str {
        match self {
            ComputeHost::Local { .. } => "agent in this process, this machine's KVM",
            ComputeHost::Nested { .. } => {
                "inside the nested test host: this machine's KVM cannot run Linux guests"
            }
        }
    }

    /// What tests and tools need to find the compute host.
    pub fn describe(&self) -> Value {
        match self {
            ComputeHost::Local { name, .. } => json!({"mode": "local", "host": name}),
            ComputeHost::Nested { name, host, .. } => json!({
                "mode": "nested", "host": name,
                "job_folder": host.shared_dir(),
            }),
        }
    }

    /// Waits until the compute API lists the host's hypervisor as up.
    pub async fn wait_registered(&self, admin: &Cloud, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = admin
                .ok(Method::GET, "compute", "/os-hypervisors/detail", None)
                .await?;
            let up = v["hypervisors"].as_array().into_iter().flatten().any(|h| {
                h["hypervisor_hostname"] == self.name()
                    && h["state"] == "up"
                    && h["status"] == "enabled"
            });
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the compute host {} did not register within {timeout:?}",
                    self.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the agent (and the nested host with it).
    pub async fn stop(self) {
        match self {
            ComputeHost::Local { agent, .. } => agent.shutdown().await,
            ComputeHost::Nested {
                host,
                stop_log,
                saved,
                ..
            } => {
                let _ = tokio::task::spawn_blocking(move || {
                    // The agent stops, then its state leaves L1 (whose
                    // disk is memory) for the state folder.
                    let out = host.run_timeout(
                        "pid=$(cat /mica-job/agent.pid)\n\
                         kill -TERM $pid 2>/dev/null\n\
                         for i in $(seq 1 200); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done\n\
                         tar --sparse -C /var/lib -cf /mica-job/compute-state.tar mica",
                        Duration::from_secs(300),
                    );
                    match out {
                        Ok(o) if o.code == 0 => {
                            let tar = host.shared_dir().join("compute-state.tar");
                            if let Err(e) = std::fs::copy(&tar, &saved) {
                                tracing::error!("keeping the compute host's state in {}: {e}", saved.display());
                            } else {
                                tracing::info!(saved = %saved.display(), "the compute host's state is kept");
                            }
                        }
                        Ok(o) => tracing::error!("saving the compute host's state: {}{}", o.stdout, o.stderr),
                        Err(e) => tracing::error!("saving the compute host's state: {e:#}"),
                    }
                    drop(host);
                })
                .await;
                stop_log.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Boots the nested host, brings up its user network and starts
/// `mica-agent` in it. Returns the host and the agent's log file.
fn boot_nested(
    memory_mib: u32,
    host_ports: Vec<u16>,
    agent_toml: &str,
    agent_bin: &Path,
    agent_sets: &[String],
    saved: &Path,
) -> Result<(NestedHost, PathBuf)> {
    let mut opts = NestedOptions::new("mica-up");
    opts.memory_mib = memory_mib;
    opts.host_ports = host_ports;
    tracing::info!(
        memory_mib,
        "booting the nested test host for the compute agent"
    );
    let host = NestedHost::boot(opts)?;
    if !host.ready_line().contains("kvm=yes") {
        bail!("the nested test host has no KVM: {}", host.ready_line());
    }
    tracing::info!(took = ?host.boot_time(), ready = host.ready_line(), "nested test host ready");
    let out = host.run(
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         modprobe virtio_net\n\
         for i in $(seq 1 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done\n\
         if ! ip -4 addr show dev eth0 | grep -q 10.0.2.15; then\n\
           ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2\n\
         fi",
    )?;
    if out.code != 0 {
        bail!("the nested host's network: {}{}", out.stdout, out.stderr);
    }
    if saved.exists() {
        // What the agent had when the last `mica up` stopped.
        let tar = host.shared_dir().join("compute-state.tar");
        std::fs::copy(saved, &tar)?;
        let out = host.run("tar --sparse -C /var/lib -xf /mica-job/compute-state.tar && rm /mica-job/compute-state.tar")?;
        if out.code != 0 {
            bail!(
                "restoring the compute host's state: {}{}",
                out.stdout,
                out.stderr
            );
        }
        tracing::info!(from = %saved.display(), "restored the compute host's state");
    }
    std::fs::write(host.shared_dir().join("agent.toml"), agent_toml)?;
    let log = host.shared_dir().join("agent.log");
    std::fs::write(&log, "")?;
    // A background job: the agent runs until it is told to stop.
    host.spawn(&format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         echo $$ > /mica-job/agent.pid\n\
         exec {} --config /mica-job/agent.toml{} >> /mica-job/agent.log 2>&1",
        agent_bin.display(),
        agent_sets
            .iter()
            .map(|s| format!(" --set '{}'", s.replace('\'', "")))
            .collect::<String>()
    ))?;
    Ok((host, log))
}

/// Copies the nested agent's log lines to this process's log.
fn follow_log(path: PathBuf, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::File::open(&path) else {
            return;
        };
        let mut pos = 0u64;
        let mut line = String::new();
        while !stop.load(Ordering::SeqCst) {
            let _ = f.seek(std::io::SeekFrom::Start(pos));
            let mut r = std::io::BufReader::new(&f);
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(n) if n > 0 && line.ends_with('\n') => {
                        pos += n as u64;
                        eprint!("[compute] {line}");
                    }
                    _ => break,
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}
