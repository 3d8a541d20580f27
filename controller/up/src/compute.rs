//! The compute host of `mica up`: the agent in this process on this machine's
//! KVM, or — where this machine's /dev/kvm cannot run Linux guests — the real
//! `mica-agent` inside the nested test host (a QEMU guest with a KVM of its
//! own), talking to the controller over RabbitMQ.

use std::io::{BufRead as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mica_agent::{Agent, AgentOptions, VmmBackend};
use mica_controller::config::Config as ControllerConfig;
use mica_rpc::compute::PowerState;
use mica_rpc::conductor::{
    HostInstances, HostInstancesRequest, PowerStateChange, PowerStateChanged,
};
use mica_rpc::{Rpc, Topic};
use mica_tests::nested::{HOST_FROM_L1, JobOutput, NestedHost, NestedOptions};
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

/// A binary next to this executable (where `cargo build` puts the
/// workspace's binaries).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
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

/// How to start a [`NestedCompute`].
#[derive(Debug, Clone)]
pub struct NestedComputeOptions {
    /// The agent's host name (and the nested host's, in logs).
    pub name: String,
    pub memory_mib: u32,
    /// RabbitMQ as this machine sees it (`amqp://…@127.0.0.1:5672/vhost`);
    /// the agent reaches it through the nested host's user network.
    pub amqp_url: String,
    /// The bus namespace of the controller.
    pub namespace: String,
    /// The image API's port on this machine's loopback.
    pub image_port: u16,
    pub agent_bin: PathBuf,
    pub vmm_bin: PathBuf,
    /// The guest kernel for raw images.
    pub kernel: PathBuf,
    /// `--set section.key=value` overrides of the agent's configuration.
    pub agent_sets: Vec<String>,
    /// The agent's state saved by [`NestedCompute::stop`], restored first
    /// when the file exists.
    pub saved_state: Option<PathBuf>,
    /// Run alongside other nested hosts that share the machine lock.
    pub shared_lock: bool,
    /// A port of this machine's loopback forwarded to the agent's console
    /// channel in L1 (the console proxy dials it); none: no consoles.
    pub console_port: Option<u16>,
    /// The metadata service's port on this machine's loopback and its
    /// shared secret: the agent's metadata proxy forwards there. None: no
    /// metadata proxy.
    pub metadata: Option<(u16, String)>,
}

/// The agent's console channel port inside L1.
pub const L1_CONSOLE_PORT: u16 = 6090;

/// A compute host in the nested test host: L1 (a QEMU guest with a KVM of its
/// own) running the real `mica-agent` over RabbitMQ.
pub struct NestedCompute {
    pub name: String,
    pub host: NestedHost,
}

impl NestedCompute {
    /// Boots L1, restores the saved agent state if any, writes the agent's
    /// configuration and starts it (a background job). Blocking.
    pub fn start(o: &NestedComputeOptions) -> Result<NestedCompute> {
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let port = |url: &str| {
            url.rsplit(':')
                .next()
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse().ok())
        };
        let amqp_port: u16 = port(&o.amqp_url).unwrap_or(5672);
        let amqp = o
            .amqp_url
            .replace("@127.0.0.1:", &format!("@{HOST_FROM_L1}:"))
            .replace("@localhost:", &format!("@{HOST_FROM_L1}:"));
        let config = format!(
            "[agent]\nhost = {host}\nstate_dir = \"/var/lib/mica\"\nrun_dir = \"/run/mica\"\n\
             report_interval_s = 10\nsync_power_state_interval_s = 60\n\n\
             [rpc]\nurl = {amqp}\nnamespace = {ns}\n\n\
             [vmm]\nbinary = {vmm}\nkernel = {kernel}\n\
             cmdline = \"console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet\"\n\
             # L1's KVM (in QEMU's software CPU) cannot give guests XSAVE.\n\
             extra_cmdline = \"noxsave\"\nshutdown_timeout_s = 30\nstart_timeout_s = 60\n\n\
             [resources]\nreserved_host_memory_mb = 384\n\
             # L1's disk is memory (a tmpfs of half its size) and root disks\n\
             # are sparse copies: overcommit it as thin provisioning would.\n\
             disk_allocation_ratio = 20.0\n\n\
             [network]\n{metadata}\n\
             [console]\n{console}",
            metadata = match &o.metadata {
                Some((port, secret)) => format!(
                    "metadata_url = \"http://{HOST_FROM_L1}:{port}\"\nmetadata_shared_secret = {}\n",
                    quote(secret)
                ),
                None => String::new(),
            },
            console = match o.console_port {
                // Reached only through QEMU's forward from this machine's
                // loopback: L1's user network has no other way in.
                Some(p) => format!(
                    "listen = \"0.0.0.0:{L1_CONSOLE_PORT}\"\nadvertise = \"127.0.0.1:{p}\"\n"
                ),
                None => "listen = \"\"\n".to_owned(),
            },
            host = quote(&o.name),
            amqp = quote(&amqp),
            ns = quote(&o.namespace),
            vmm = quote(&o.vmm_bin.display().to_string()),
            kernel = quote(&o.kernel.display().to_string()),
        );

        let mut opts = NestedOptions::new(&o.name);
        opts.memory_mib = o.memory_mib;
        opts.host_ports = vec![amqp_port, o.image_port];
        if let Some((port, _)) = &o.metadata {
            opts.host_ports.push(*port);
        }
        opts.shared_lock = o.shared_lock;
        if let Some(p) = o.console_port {
            opts.forwards.push((p, L1_CONSOLE_PORT));
        }
        tracing::info!(
            memory_mib = o.memory_mib,
            "booting the nested test host for the compute agent"
        );
        let host = NestedHost::boot(opts)?;
        if !host.ready_line().contains("kvm=yes") {
            bail!("the nested test host has no KVM: {}", host.ready_line());
        }
        tracing::info!(took = ?host.boot_time(), ready = host.ready_line(), "nested test host ready");
        let compute = NestedCompute {
            name: o.name.clone(),
            host,
        };
        if let Some(saved) = o.saved_state.as_deref().filter(|p| p.exists()) {
            // What the agent had when it was last stopped.
            std::fs::copy(saved, compute.host.shared_dir().join("compute-state.tar"))?;
            let out = compute.sh(
                "tar --sparse -C /var/lib -xf /mica-job/compute-state.tar && rm /mica-job/compute-state.tar",
            )?;
            if out.code != 0 {
                bail!(
                    "restoring the compute host's state: {}{}",
                    out.stdout,
                    out.stderr
                );
            }
            tracing::info!(from = %saved.display(), "restored the compute host's state");
        }
        std::fs::write(compute.host.shared_dir().join("agent.toml"), config)?;
        std::fs::write(compute.log_path(), "")?;
        // A background job: the agent runs until it is told to stop.
        compute.host.spawn(&format!(
            "{PATH}echo $$ > /mica-job/agent.pid\n\
             exec {} --config /mica-job/agent.toml{} >> /mica-job/agent.log 2>&1",
            o.agent_bin.display(),
            o.agent_sets
                .iter()
                .map(|s| format!(" --set '{}'", s.replace('\'', "")))
                .collect::<String>()
        ))?;
        Ok(compute)
    }

    /// Runs a bash script on the compute host (the usual PATH set).
    pub fn sh(&self, script: &str) -> Result<JobOutput> {
        self.host
            .run_timeout(&format!("{PATH}{script}"), Duration::from_secs(300))
    }

    /// The agent's log file, as this machine sees it.
    pub fn log_path(&self) -> PathBuf {
        self.host.shared_dir().join("agent.log")
    }

    /// Stops the agent, saves its state to `save_to` (if given) and powers
    /// the nested host off. Blocking.
    pub fn stop(self, save_to: Option<&Path>) {
        let mut script = String::from(
            "pid=$(cat /mica-job/agent.pid)\n\
             kill -TERM $pid 2>/dev/null\n\
             for i in $(seq 1 200); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done\n",
        );
        if save_to.is_some() {
            // L1's disk is memory: the state leaves it for this machine.
            script.push_str("tar --sparse -C /var/lib -cf /mica-job/compute-state.tar mica\n");
        }
        match (self.sh(&script), save_to) {
            (Ok(o), Some(to)) if o.code == 0 => {
                let tar = self.host.shared_dir().join("compute-state.tar");
                match std::fs::copy(&tar, to) {
                    Ok(_) => {
                        tracing::info!(saved = %to.display(), "the compute host's state is kept")
                    }
                    Err(e) => {
                        tracing::error!("keeping the compute host's state in {}: {e}", to.display())
                    }
                }
            }
            (Ok(o), _) if o.code != 0 => {
                tracing::error!("stopping the compute agent: {}{}", o.stdout, o.stderr)
            }
            (Err(e), _) => tracing::error!("stopping the compute agent: {e:#}"),
            _ => {}
        }
    }
}

/// The PATH of the compute host's jobs.
const PATH: &str = "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n";

/// The running compute host.
pub enum ComputeHost {
    Local { name: String, agent: Agent },
    Nested(Box<Supervised>),
}

/// The nested compute host under `mica up`'s watch: when its QEMU dies (an L1
/// kernel panic, a kill) or L1 stays stalled, the death is logged at once, the
/// servers the database placed there are reported stopped (they are gone with
/// L1's memory), and a new L1 boots with the agent's state as last saved.
pub struct Supervised {
    name: String,
    /// `None` while a new L1 boots.
    compute: Arc<Mutex<Option<NestedCompute>>>,
    stop: Arc<AtomicBool>,
    /// Answers the stop flag of the log follower of the L1 running last.
    task: tokio::task::JoinHandle<Arc<AtomicBool>>,
    /// Where the agent's state (instance disks, image cache, records) is
    /// kept while the nested host is down.
    saved: PathBuf,
    /// The description of the running host (compute.json).
    described: Arc<Mutex<Value>>,
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
        let vmm_bin = sibling_binary("mica-vmm")?;
        if mode == ComputeMode::Nested {
            let saved = state.join("nested-compute.tar");
            let options = NestedComputeOptions {
                name: format!("{}-nested", host_name()),
                memory_mib: args.nested_memory_mib,
                amqp_url: args.nested_amqp_url.clone(),
                namespace: secrets.namespace.clone(),
                image_port: port_of(&controller.api.image_listen)?,
                agent_bin: sibling_binary("mica-agent")?,
                vmm_bin,
                kernel,
                agent_sets: args.agent_set.clone(),
                saved_state: Some(saved.clone()),
                shared_lock: false,
                console_port: Some(mica_tests::free_port()),
                metadata: Some((
                    port_of(&controller.api.metadata_listen)?,
                    controller.metadata.shared_secret.clone(),
                )),
            };
            let start = options.clone();
            let compute =
                tokio::task::spawn_blocking(move || NestedCompute::start(&start)).await??;
            return Ok(ComputeHost::Nested(Box::new(Supervised::start(
                compute,
                options,
                rpc,
                state.join("compute.json"),
            ))));
        }
        // The agent in this process, on the controller's in-process bus.
        let name = host_name();
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let path = |p: PathBuf| quote(&p.display().to_string());
        let mut overrides = vec![
            format!("agent.host={}", quote(&name)),
            format!("agent.state_dir={}", path(state.join("compute"))),
            format!("agent.run_dir={}", path(state.join("run"))),
            format!("rpc.url={}", quote(&controller.messaging.transport_url)),
            format!("rpc.namespace={}", quote(&secrets.namespace)),
            format!("vmm.binary={}", path(vmm_bin)),
            format!("vmm.kernel={}", path(kernel)),
            // The proxy is in this process: an ephemeral loopback port.
            "console.listen=\"127.0.0.1:0\"".to_owned(),
            format!(
                "network.metadata_url={}",
                quote(&format!(
                    "http://127.0.0.1:{}",
                    port_of(&controller.api.metadata_listen)?
                ))
            ),
            format!(
                "network.metadata_shared_secret={}",
                quote(&controller.metadata.shared_secret)
            ),
        ];
        overrides.extend(args.agent_set.iter().cloned());
        let config = mica_agent::config::Config::parse("", "mica up", &overrides)
            .map_err(|e| anyhow::anyhow!("the agent's configuration: {e}"))?;
        let options = AgentOptions::from_config(&config);
        let backend =
            VmmBackend::new(&options.host, &config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let agent = Agent::start(rpc, options, Arc::new(backend))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(ComputeHost::Local { name, agent })
    }

    /// The host name the agent serves.
    pub fn name(&self) -> &str {
        match self {
            ComputeHost::Local { name, .. } => name,
            ComputeHost::Nested(s) => &s.name,
        }
    }

    /// Says where guests run.
    pub fn mode_text(&self) -> &'static str {
        match self {
            ComputeHost::Local { .. } => "agent in this process, this machine's KVM",
            ComputeHost::Nested(_) => {
                "inside the nested test host: this machine's KVM cannot run Linux guests"
            }
        }
    }

    /// What tests and tools need to find the compute host.
    pub fn describe(&self) -> Value {
        match self {
            ComputeHost::Local { name, .. } => json!({"mode": "local", "host": name}),
            ComputeHost::Nested(s) => lock(&s.described).clone(),
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

    /// Stops the agent (and the nested host with it, its state saved).
    pub async fn stop(self) {
        match self {
            ComputeHost::Local { agent, .. } => agent.shutdown().await,
            ComputeHost::Nested(s) => s.stop().await,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn describe_nested(compute: &NestedCompute) -> Value {
    json!({
        "mode": "nested", "host": compute.name,
        "job_folder": compute.host.shared_dir(),
        "qemu_pid": compute.host.qemu_pid(),
    })
}

/// How often the supervisor looks at L1.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);
/// Watchdog kicks in a row (one per 4 s without CPU use or a job-loop
/// heartbeat) after which a stalled L1 is given up and restarted.
const STALL_KICKS_LIMIT: u32 = 8;

impl Supervised {
    fn start(
        compute: NestedCompute,
        options: NestedComputeOptions,
        rpc: Rpc,
        describe_to: PathBuf,
    ) -> Supervised {
        let name = compute.name.clone();
        let saved = options
            .saved_state
            .clone()
            .expect("mica up's nested host keeps its state");
        let described = Arc::new(Mutex::new(describe_nested(&compute)));
        let stop = Arc::new(AtomicBool::new(false));
        let log_stop = Arc::new(AtomicBool::new(false));
        follow_log(compute.log_path(), log_stop.clone());
        let compute = Arc::new(Mutex::new(Some(compute)));
        let task = tokio::spawn(supervise(
            compute.clone(),
            options,
            rpc,
            stop.clone(),
            log_stop,
            described.clone(),
            describe_to,
        ));
        Supervised {
            name,
            compute,
            stop,
            task,
            saved,
            described,
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let log_stop = self.task.await.ok();
        let compute = lock(&self.compute).take();
        if let Some(compute) = compute {
            let saved = self.saved;
            let _ = tokio::task::spawn_blocking(move || compute.stop(Some(&saved))).await;
        }
        // The agent's last lines are copied; then the follower ends.
        if let Some(flag) = log_stop {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// Why L1 is gone, if it is: QEMU exited (reaped here), or L1 stayed stalled
/// through [`STALL_KICKS_LIMIT`] watchdog kicks (QEMU is then killed).
fn l1_death(compute: &mut NestedCompute) -> Option<String> {
    let pid = compute.host.qemu_pid();
    if let Some(status) = compute.host.exited() {
        return Some(format!("its QEMU (pid {pid}) exited: {status}"));
    }
    let kicks = compute.host.stall_kicks();
    if kicks >= STALL_KICKS_LIMIT {
        compute.host.kill();
        return Some(format!(
            "L1 used no CPU through {kicks} watchdog kicks (stalled); its QEMU (pid {pid}) was killed"
        ));
    }
    None
}

async fn supervise(
    compute: Arc<Mutex<Option<NestedCompute>>>,
    options: NestedComputeOptions,
    rpc: Rpc,
    stop: Arc<AtomicBool>,
    mut log_stop: Arc<AtomicBool>,
    described: Arc<Mutex<Value>>,
    describe_to: PathBuf,
) -> Arc<AtomicBool> {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(SUPERVISE_EVERY).await;
        let death = {
            let mut guard = lock(&compute);
            let Some(c) = guard.as_mut() else { continue };
            l1_death(c).map(|why| (why, c.host.console_tail(15)))
        };
        let Some((why, console)) = death else {
            continue;
        };
        let message = format!(
            "the nested compute host {} died: {why}; marking its servers stopped and booting it again",
            options.name
        );
        tracing::error!("{message}\n--- the end of L1's console ---\n{console}");
        // Plainly on stderr too, whatever the log filter.
        eprintln!("mica up: {message}");
        log_stop.store(true, Ordering::SeqCst);
        // The old L1's lock, folder and log go before a new one boots.
        let dead = lock(&compute).take();
        drop(dead);
        fence_servers(&rpc, &options.name).await;

        let mut delay = Duration::from_secs(2);
        loop {
            if stop.load(Ordering::SeqCst) {
                return log_stop;
            }
            let o = options.clone();
            match tokio::task::spawn_blocking(move || NestedCompute::start(&o)).await {
                Ok(Ok(c)) => {
                    log_stop = Arc::new(AtomicBool::new(false));
                    follow_log(c.log_path(), log_stop.clone());
                    let d = describe_nested(&c);
                    if let Ok(text) = serde_json::to_string_pretty(&d) {
                        let _ = std::fs::write(&describe_to, text);
                    }
                    *lock(&described) = d;
                    tracing::warn!(
                        host = %options.name,
                        took = ?c.host.boot_time(),
                        "the nested compute host is back (its agent registers again)"
                    );
                    eprintln!("mica up: the nested compute host {} is back", options.name);
                    *lock(&compute) = Some(c);
                    break;
                }
                Ok(Err(e)) => tracing::error!("booting the nested compute host again: {e:#}"),
                Err(e) => tracing::error!("booting the nested compute host again: {e}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
    log_stop
}

/// Reports every server the database places on the dead `host` as having no
/// VMM, as the host's own agent would after a restart: the conductor turns
/// ACTIVE, PAUSED and SUSPENDED servers into SHUTOFF (Nova's power-state sync;
/// nothing is restarted behind the user's back, as with Nova's default
/// `resume_guests_state_on_host_boot = false`). Servers with a task in
/// progress are left to it.
async fn fence_servers(rpc: &Rpc, host: &str) {
    let known = match rpc
        .call_method::<HostInstances>(
            Topic::conductor(),
            &HostInstancesRequest {
                host: host.to_owned(),
            },
            Duration::from_secs(30),
        )
        .await
    {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(%host, "listing the dead host's servers: {e}");
            return;
        }
    };
    let mut n = 0;
    for k in known {
        if k.task_state.is_some() || k.power_state == PowerState::NoState {
            continue;
        }
        let change = PowerStateChange {
            instance_uuid: k.instance_uuid.clone(),
            host: host.to_owned(),
            vmm_id: None,
            power_state: PowerState::NoState,
        };
        match rpc
            .cast_method::<PowerStateChanged>(Topic::conductor(), &change)
            .await
        {
            Ok(()) => n += 1,
            Err(e) => tracing::error!(instance = %k.instance_uuid, "reporting a lost server: {e}"),
        }
    }
    tracing::warn!(%host, servers = n, "servers of the dead compute host reported without a VMM");
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

/// The port of a listen address (`127.0.0.1:9292`).
pub fn port_of(listen: &str) -> Result<u16> {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the listen address {listen:?} has no port"))
}
