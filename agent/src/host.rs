//! The real backend: instances as mica-vmm microVMs on this host's KVM.
//!
//! A build, in order (each step idempotent; a failure at any step undoes
//! them all, so nothing is left: no process, tap, firewall table, DHCP entry,
//! disk or folder):
//!
//! 1. record the instance (`instance.json`, intent `building`);
//! 2. fetch the image into the cache ([`crate::images`]);
//! 3. make the disks ([`crate::disks`]);
//! 4. per port: the network's bridge, DHCP (with the port's entry) and NAT,
//!    the port's tap and its firewall ([`crate::network`]);
//! 5. write `vm.json` and start the VMM ([`crate::runner`]);
//! 6. record the intent `running`.
//!
//! ```text
//!   power actions          record intent   VMM
//!   build ───────────────► running ─────── running ◄─┐ guest reset: same VMM id,
//!   stop ────────────────► stopped         (none)    │ new process
//!   start {vmm_id} ──────► running         new VMM ──┘
//!   reboot soft ─────────► running         same VMM (guest reboots in it)
//!   reboot hard {vmm_id} ► running         new VMM
//!   pause / suspend ─────► paused/suspended  vCPUs paused (suspend = pause for now)
//!   unpause / resume ────► running         vCPUs running
//!   VMM dies by itself ──► stopped + a PowerStateChanged(shutdown) report
//! ```
//!
//! At start the backend reads every record and adopts the VMMs still
//! running; records whose VMM is gone become `stopped` (and are reported);
//! a build interrupted by a crash is undone and reported failed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mica_rpc::compute::{
    Action, BuildRequest, ConsoleKind, ConsoleOutputRequest, HostInstance, InstanceSpec,
    PortSecurityRequest, PowerActionRequest, PowerState, TerminateRequest,
};
use mica_rpc::conductor::Failure;
use mica_vmm_api::{DiskConfig, DisplayConfig, NicConfig, RequestedState, SerialConfig, VmConfig};

use crate::backend::{
    ActionOutcome, Backend, Event, EventSender, Resources, error_chain, failure, host_failure,
};
use crate::config::Config;
use crate::disks::{self, DiskError};
use crate::images::{ImageCache, ImageError};
use crate::locks::KeyedLocks;
use crate::network::dnsmasq::DhcpHost;
use crate::network::{NetError, Networking};
use crate::resources;
use crate::runner::{RunnerError, VmmHandle, VmmLaunch, VmmStatus};
use crate::store::{InstanceRecord, InstanceStore, Intent, StoreError, check_uuid};

/// Why a build (or start) failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

impl BuildError {
    /// The instance's fault: a message for users, details for admins.
    pub fn to_failure(&self, host: &str) -> Failure {
        let details = error_chain(self);
        match self {
            BuildError::Image(e) if e.is_disk_full() => host_failure(
                format!("Not enough disk space on host {host} for the instance's image"),
                details,
            ),
            BuildError::Image(ImageError::NotFound { id, .. }) => {
                failure(format!("Image {id} could not be found."), details)
            }
            BuildError::Image(e @ ImageError::ChecksumMismatch { id, .. })
            | BuildError::Image(e @ ImageError::SizeMismatch { id, .. }) => failure(
                format!("Image {id} failed verification after download: {e}"),
                details,
            ),
            BuildError::Image(e) if e.retryable() => host_failure(
                format!("Image download failed on host {host}: {e}"),
                details,
            ),
            BuildError::Image(e) => failure(e.to_string(), details),
            BuildError::Disk(e) if e.is_disk_full() => host_failure(
                format!("Not enough disk space on host {host} for the instance's disks"),
                details,
            ),
            BuildError::Disk(e @ DiskError::FlavorTooSmall { .. }) => {
                failure(e.to_string(), details)
            }
            BuildError::Disk(_) => host_failure(
                format!("Creating the instance's disks failed on host {host}"),
                details,
            ),
            BuildError::Net(NetError::Invalid { message, .. }) => failure(message.clone(), details),
            BuildError::Net(_) => host_failure(
                format!("Plugging the instance's network failed on host {host}"),
                details,
            ),
            BuildError::Runner(_) => host_failure(
                format!("The instance's VMM failed to start on host {host}"),
                details,
            ),
            BuildError::Store(_) => host_failure(
                format!("Recording the instance failed on host {host}"),
                details,
            ),
            BuildError::Invalid(m) => failure(m.clone(), details),
        }
    }
}

/// Paths of one instance's files.
struct Paths {
    dir: PathBuf,
    root: PathBuf,
    ephemeral: PathBuf,
    swap: PathBuf,
    vm_json: PathBuf,
    console: PathBuf,
    vmm_log: PathBuf,
}

impl Paths {
    fn new(dir: PathBuf) -> Self {
        Self {
            root: dir.join("root.raw"),
            ephemeral: dir.join("ephemeral.raw"),
            swap: dir.join("swap.raw"),
            vm_json: dir.join("vm.json"),
            console: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
            dir,
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct VmmBackend {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    cfg: Config,
    store: InstanceStore,
    images: ImageCache,
    net: Networking,
    /// One operation per instance at a time.
    locks: KeyedLocks,
    /// The VMMs running, by VMM id.
    vmms: Mutex<HashMap<String, Arc<VmmHandle>>>,
    events: OnceLock<EventSender>,
    binary: PathBuf,
    traits: Vec<String>,
    cpu_model: String,
    /// The host's address for operators (found at start).
    host_ip: OnceLock<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Images(#[from] ImageError),
    #[error("{0}")]
    Invalid(String),
    #[error("the compute host cannot run guests: {0}")]
    Programs(#[from] crate::programs::Missing),
}

impl VmmBackend {
    /// A backend for `host` with `cfg` (folders created; nothing adopted
    /// until [`Backend::start`]).
    pub fn new(host: &str, cfg: &Config) -> Result<Self, SetupError> {
        // Every program the backend runs, once, before anything is made.
        let mut programs =
            crate::programs::agent_programs(&cfg.images.qemu_img, &cfg.network.dnsmasq);
        if !cfg.network.security_groups {
            programs.retain(|p| p.name != "nft");
        }
        crate::programs::check(&programs)?;
        for dir in [cfg.agent.state_dir.clone(), cfg.agent.run_dir.join("vmm")] {
            std::fs::create_dir_all(&dir).map_err(|source| SetupError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        let sock = cfg
            .agent
            .run_dir
            .join("vmm")
            .join(format!("{}.serial", "0".repeat(36)));
        if sock.as_os_str().len() > 107 {
            return Err(SetupError::Invalid(format!(
                "agent.run_dir {} is too long for Unix socket paths (at most 107 bytes with a VMM id)",
                cfg.agent.run_dir.display()
            )));
        }
        let store = InstanceStore::open(&cfg.agent.state_dir)?;
        let images = ImageCache::open(
            &cfg.agent.state_dir.join("images"),
            &cfg.images.qemu_img,
            Duration::from_secs(cfg.images.download_timeout_s),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                cfg: cfg.clone(),
                store,
                images,
                net: Networking::new(&cfg.network, &cfg.agent.state_dir),
                locks: KeyedLocks::default(),
                vmms: Mutex::new(HashMap::new()),
                events: OnceLock::new(),
                binary: resolve_vmm_binary(&cfg.vmm.binary),
                traits: resources::host_traits(),
                cpu_model: resources::cpu_model(),
                host_ip: OnceLock::new(),
            }),
        })
    }

    /// The mica-vmm binary in use.
    pub fn vmm_binary(&self) -> &Path {
        &self.inner.binary
    }

    /// Stops every VMM (gracefully within `timeout`, then hard), for an
    /// all-in-one process that owns its instances' lives. Records say
    /// `stopped`.
    pub async fn stop_all(&self, timeout: Duration) {
        let (records, _) = self.inner.store.all();
        let mut tasks = Vec::new();
        for rec in records {
            let this = self.clone();
            tasks.push(tokio::spawn(async move {
                let _guard = this.inner.locks.lock(&rec.spec.uuid).await;
                if let Some(h) = this.inner.take_vmm(&rec.vmm_id) {
                    h.stop(Some(timeout)).await;
                    let mut rec = rec;
                    rec.intent = Intent::Stopped;
                    let _ = this.inner.store.save(&rec);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// `mica-vmm` next to this executable, else on PATH.
fn resolve_vmm_binary(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("mica-vmm")))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    crate::programs::locate("mica-vmm", &path).unwrap_or_else(|| PathBuf::from("mica-vmm"))
}

/// The host's first global IPv4 address (for operators, in os-hypervisors).
pub(crate) async fn first_global_ipv4() -> String {
    let Ok(out) = tokio::process::Command::new("ip")
        .args(["-j", "-4", "addr", "show", "scope", "global"])
        .output()
        .await
    else {
        return String::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return String::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["addr_info"].as_array().into_iter().flatten())
        .find_map(|a| a["local"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Inner {
    fn emit(&self, event: Event) {
        if let Some(tx) = self.events.get() {
            let _ = tx.send(event);
        }
    }

    fn paths(&self, uuid: &str) -> Result<Paths, StoreError> {
        Ok(Paths::new(self.store.dir(uuid)?))
    }

    fn api_sock(&self, vmm_id: &str) -> PathBuf {
        self.cfg
            .agent
            .run_dir
            .join("vmm")
            .join(format!("{vmm_id}.sock"))
    }

    fn serial_sock(&self, vmm_id: &str) -> PathBuf {
        self.cfg
            .agent
            .run_dir
            .join("vmm")
            .join(format!("{vmm_id}.serial"))
    }

    fn vnc_sock(&self, vmm_id: &str) -> PathBuf {
        self.cfg
            .agent
            .run_dir
            .join("vmm")
            .join(format!("{vmm_id}.vnc"))
    }

    /// Removes the control, serial and VNC sockets of a VMM that has ended.
    fn remove_sockets(&self, vmm_id: &str) {
        let _ = std::fs::remove_file(self.api_sock(vmm_id));
        let _ = std::fs::remove_file(self.serial_sock(vmm_id));
        let _ = std::fs::remove_file(self.vnc_sock(vmm_id));
    }

    fn vmm(&self, vmm_id: &str) -> Option<Arc<VmmHandle>> {
        self.vmms.lock().expect("vmms").get(vmm_id).cloned()
    }

    fn take_vmm(&self, vmm_id: &str) -> Option<Arc<VmmHandle>> {
        self.vmms.lock().expect("vmms").remove(vmm_id)
    }

    /// The live VMM of a record, if any.
    fn live_vmm(&self, rec: &InstanceRecord) -> Option<Arc<VmmHandle>> {
        self.vmm(&rec.vmm_id)
            .filter(|h| !matches!(h.status(), VmmStatus::Exited(_)))
    }

    /// DHCP entries of every port on `network_id` on this host.
    fn dhcp_hosts(&self, network_id: &str) -> Vec<DhcpHost> {
        let (records, _) = self.store.all();
        let mut hosts = Vec::new();
        for rec in &records {
            for port in rec.spec.ports.iter().filter(|p| p.network.id == network_id) {
                for ip in &port.fixed_ips {
                    if let Ok(IpAddr::V4(ip)) = ip.ip_address.parse::<IpAddr>() {
                        hosts.push(DhcpHost {
                            mac: port.mac_address.clone(),
                            ip,
                            hostname: rec.spec.hostname.clone(),
                            instance_uuid: rec.spec.uuid.clone(),
                            project_id: rec.spec.project_id.clone(),
                        });
                    }
                }
            }
        }
        hosts
    }

    /// Bridges, DHCP, taps and firewalls of the instance's ports. Returns
    /// the taps in port order.
    async fn plug(&self, spec: &InstanceSpec) -> Result<Vec<String>, NetError> {
        let mut taps = Vec::new();
        for port in &spec.ports {
            self.net
                .ensure_network(&port.network, &self.dhcp_hosts(&port.network.id))
                .await?;
            taps.push(self.net.plug_port(port).await?);
        }
        Ok(taps)
    }

    fn vm_config(
        &self,
        spec: &InstanceSpec,
        vmm_id: &str,
        taps: &[String],
        paths: &Paths,
    ) -> VmConfig {
        let v = &self.cfg.vmm;
        let base = spec
            .image
            .properties
            .get("os_command_line")
            .and_then(|c| c.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| v.cmdline.clone());
        let mut cmdline = base;
        if !v.extra_cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&v.extra_cmdline);
        }
        // The host name on the command line too, for guests that read no
        // metadata (Mica's tiny image).
        cmdline.push_str(&format!(
            " mica.hostname={}",
            crate::network::dnsmasq::sanitize_hostname(&spec.hostname)
        ));
        let mut disks = vec![DiskConfig {
            id: "root".into(),
            path: paths.root.clone(),
            read_only: false,
        }];
        if spec.flavor.ephemeral_gb > 0 {
            disks.push(DiskConfig {
                id: "ephemeral0".into(),
                path: paths.ephemeral.clone(),
                read_only: false,
            });
        }
        if spec.flavor.swap_mb > 0 {
            disks.push(DiskConfig {
                id: "swap".into(),
                path: paths.swap.clone(),
                read_only: false,
            });
        }
        let nics = spec
            .ports
            .iter()
            .zip(taps)
            .enumerate()
            .map(|(i, (port, tap))| NicConfig {
                id: Some(format!("eth{i}")),
                tap: tap.clone(),
                mac: port.mac_address.to_ascii_lowercase(),
            })
            .collect();
        VmConfig {
            vcpus: spec.flavor.vcpus,
            memory_mib: spec.flavor.memory_mb,
            kernel: v.kernel.clone(),
            initrd: (!v.initrd.is_empty()).then(|| PathBuf::from(&v.initrd)),
            cmdline,
            disks,
            nics,
            serial: SerialConfig {
                log: Some(paths.console.clone()),
                socket: Some(self.serial_sock(vmm_id)),
                ..Default::default()
            },
            rng: true,
            display: v.display.then(|| DisplayConfig {
                width: v.display_width,
                height: v.display_height,
                vnc_socket: Some(self.vnc_sock(vmm_id)),
                ..Default::default()
            }),
            boot_timer: true,
        }
    }

    /// Writes the VM configuration and starts the VMM; registers and
    /// watches it.
    async fn launch(
        self: &Arc<Self>,
        rec: &InstanceRecord,
        taps: &[String],
    ) -> Result<Arc<VmmHandle>, BuildError> {
        let paths = self.paths(&rec.spec.uuid)?;
        let config = self.vm_config(&rec.spec, &rec.vmm_id, taps, &paths);
        let json = serde_json::to_vec_pretty(&config).expect("VM configurations serialize");
        crate::store::write_atomic(&paths.vm_json, &json).map_err(|source| {
            BuildError::Store(StoreError::Io {
                op: "writing",
                path: paths.vm_json.clone(),
                source,
            })
        })?;
        let handle = VmmHandle::spawn(VmmLaunch {
            vmm_id: rec.vmm_id.clone(),
            instance_uuid: rec.spec.uuid.clone(),
            binary: self.binary.clone(),
            config: paths.vm_json.clone(),
            api_sock: self.api_sock(&rec.vmm_id),
            log: paths.vmm_log.clone(),
            log_level: self.cfg.vmm.log_level.clone(),
            start_timeout: Duration::from_secs(self.cfg.vmm.start_timeout_s.max(1)),
        })
        .await?;
        Ok(self.register(rec, handle))
    }

    fn register(self: &Arc<Self>, rec: &InstanceRecord, handle: VmmHandle) -> Arc<VmmHandle> {
        let handle = Arc::new(handle);
        self.vmms
            .lock()
            .expect("vmms")
            .insert(rec.vmm_id.clone(), handle.clone());
        let me = self.clone();
        let uuid = rec.spec.uuid.clone();
        let watched = handle.clone();
        tokio::spawn(async move {
            let exit = watched.wait_exit().await;
            if !exit.requested {
                me.vmm_exited(&uuid, &watched, exit).await;
            }
        });
        handle
    }

    /// A VMM ended without being asked to: the guest powered off or reset,
    /// or the process died.
    async fn vmm_exited(
        self: &Arc<Self>,
        uuid: &str,
        handle: &Arc<VmmHandle>,
        exit: crate::runner::Exit,
    ) {
        let _guard = self.locks.lock(uuid).await;
        let vmm_id = handle.vmm_id().to_owned();
        // Still this instance's VMM? (A terminate or a new VMM may have come
        // in between.)
        let current = self.vmm(&vmm_id).is_some_and(|h| Arc::ptr_eq(&h, handle));
        if !current {
            return;
        }
        let Ok(Some(mut rec)) = self.store.load(uuid) else {
            self.take_vmm(&vmm_id);
            return;
        };
        if rec.vmm_id != vmm_id {
            self.take_vmm(&vmm_id);
            return;
        }
        // A guest that reset itself boots again in a new VMM with the same
        // id; until that one replaces the old handle, the instance counts as
        // running (see `power_state`), so power-state sync does not report a
        // reboot as a stop.
        if exit.guest_reset() && matches!(rec.intent, Intent::Running) {
            tracing::info!(instance = %uuid, vmm = %vmm_id, "the guest reset itself: starting its VMM again");
            let taps: Vec<String> = rec
                .spec
                .ports
                .iter()
                .map(|p| self.net.tap_name(&p.id))
                .collect();
            match self.launch(&rec, &taps).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(instance = %uuid, error = %error_chain(&e), "cannot restart the VMM after a guest reset")
                }
            }
        }
        self.take_vmm(&vmm_id);
        tracing::warn!(instance = %uuid, vmm = %vmm_id, code = ?exit.code, signal = ?exit.signal, "the VMM ended by itself: the instance is stopped");
        rec.intent = Intent::Stopped;
        let _ = self.store.save(&rec);
        self.remove_sockets(&vmm_id);
        self.emit(Event::PowerState {
            instance_uuid: uuid.to_owned(),
            vmm_id: None,
            power_state: PowerState::Shutdown,
        });
    }

    async fn build(self: &Arc<Self>, req: &BuildRequest) -> Result<PowerState, BuildError> {
        let spec = &req.instance;
        let rec = InstanceRecord {
            spec: spec.clone(),
            vmm_id: req.vmm_id.clone(),
            intent: Intent::Building,
            attempt: req.attempt,
        };
        self.store.save(&rec)?;
        let paths = self.paths(&spec.uuid)?;
        let started = std::time::Instant::now();

        let (image, meta) = self.images.fetch(&spec.image).await?;
        let image_ms = started.elapsed().as_millis() as u64;
        let size = disks::root_disk_size(meta.virtual_size, spec.flavor.root_gb)?;
        let (root, image_path) = (paths.root.clone(), image.clone());
        tokio::task::spawn_blocking(move || disks::create_root_disk(&image_path, &root, size))
            .await
            .map_err(|e| BuildError::Invalid(format!("disk copy task failed: {e}")))??;
        if spec.flavor.ephemeral_gb > 0 {
            disks::create_ephemeral(
                &paths.ephemeral,
                spec.flavor.ephemeral_gb,
                self.cfg.disks.ephemeral_format,
            )
            .await?;
        }
        if spec.flavor.swap_mb > 0 {
            disks::create_swap(&paths.swap, spec.flavor.swap_mb).await?;
        }
        let disks_ms = started.elapsed().as_millis() as u64 - image_ms;
        let taps = self.plug(spec).await?;
        let network_ms = started.elapsed().as_millis() as u64 - image_ms - disks_ms;
        let handle = self.launch(&rec, &taps).await?;
        let vmm_ms = started.elapsed().as_millis() as u64 - image_ms - disks_ms - network_ms;
        let mut rec = rec;
        rec.intent = Intent::Running;
        self.store.save(&rec)?;
        tracing::info!(image_ms, disks_ms, network_ms, vmm_ms, "build phases");
        Ok(match handle.status() {
            VmmStatus::Paused => PowerState::Paused,
            _ => PowerState::Running,
        })
    }

    /// Removes everything of an instance on this host. Best effort: goes
    /// on after an error and returns the first.
    async fn teardown(&self, spec: &InstanceSpec, vmm_id: &str) -> Result<(), Failure> {
        let mut first: Option<Failure> = None;
        let mut note = |f: Failure| {
            tracing::error!(message = %f.message, details = %f.details, "teardown step failed");
            first.get_or_insert(f);
        };
        // The process: ours, or one still answering on the socket.
        if let Some(h) = self.take_vmm(vmm_id) {
            h.stop(None).await;
        } else if let Ok(h) = VmmHandle::adopt(&self.api_sock(vmm_id), vmm_id, &spec.uuid).await {
            h.stop(None).await;
        }
        self.remove_sockets(vmm_id);
        for port in &spec.ports {
            if let Err(e) = self.net.unplug_port(&port.id).await {
                note(host_failure(
                    format!("Unplugging port {} failed", port.id),
                    error_chain(&e),
                ));
            }
        }
        if let Err(e) = self.store.remove(&spec.uuid) {
            note(host_failure(
                "Removing the instance's files failed",
                error_chain(&e),
            ));
        }
        let mut networks: BTreeMap<String, &mica_rpc::compute::NetworkSpec> = BTreeMap::new();
        for port in &spec.ports {
            networks.insert(port.network.id.clone(), &port.network);
        }
        for (id, net) in networks {
            let hosts = self.dhcp_hosts(&id);
            let result = if hosts.is_empty() && !self.network_in_use(&id) {
                self.net.release_network(&id).await
            } else {
                self.net.ensure_network(net, &hosts).await
            };
            if let Err(e) = result {
                note(host_failure(
                    format!("Updating network {id} failed"),
                    error_chain(&e),
                ));
            }
        }
        match first {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    fn network_in_use(&self, network_id: &str) -> bool {
        let (records, _) = self.store.all();
        records
            .iter()
            .any(|r| r.spec.ports.iter().any(|p| p.network.id == network_id))
    }

    /// Power state of a record as it really is.
    fn power_state(&self, rec: &InstanceRecord) -> (Option<String>, PowerState) {
        match self.vmm(&rec.vmm_id).map(|h| h.status()) {
            // Rebooting: its VMM is being started again (`vmm_exited`).
            Some(VmmStatus::Exited(e)) if e.guest_reset() && rec.intent == Intent::Running => {
                (Some(rec.vmm_id.clone()), PowerState::Running)
            }
            Some(VmmStatus::Paused) => (
                Some(rec.vmm_id.clone()),
                if rec.intent == Intent::Suspended {
                    PowerState::Suspended
                } else {
                    PowerState::Paused
                },
            ),
            Some(VmmStatus::Running) | Some(VmmStatus::ShuttingDown) => {
                (Some(rec.vmm_id.clone()), PowerState::Running)
            }
            Some(VmmStatus::Exited(_)) | None => match rec.intent {
                Intent::Building => (None, PowerState::NoState),
                _ => (None, PowerState::Shutdown),
            },
        }
    }

    async fn start_vmm(
        self: &Arc<Self>,
        rec: &mut InstanceRecord,
        vmm_id: &str,
    ) -> Result<ActionOutcome, Failure> {
        let host = self.host.clone();
        let result: Result<(), BuildError> = async {
            rec.vmm_id = vmm_id.to_owned();
            // Taps and bridges do not survive a host reboot: make them again.
            let taps = self.plug(&rec.spec).await?;
            self.launch(rec, &taps).await?;
            rec.intent = Intent::Running;
            self.store.save(rec)?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(ActionOutcome {
                vmm_id: Some(vmm_id.to_owned()),
                power_state: PowerState::Running,
            }),
            Err(e) => {
                rec.intent = Intent::Stopped;
                let _ = self.store.save(rec);
                Err(e.to_failure(&host))
            }
        }
    }

    async fn power_action(
        self: &Arc<Self>,
        req: &PowerActionRequest,
    ) -> Result<ActionOutcome, Failure> {
        let uuid = &req.instance_uuid;
        let _guard = self.locks.lock(uuid).await;
        let mut rec = self
            .store
            .load(uuid)
            .map_err(|e| host_failure("Reading the instance's record failed", error_chain(&e)))?
            .ok_or_else(|| {
                failure(
                    format!("Instance {uuid} is not on host {}", self.host),
                    String::new(),
                )
            })?;
        let default_timeout = Duration::from_secs(self.cfg.vmm.shutdown_timeout_s);
        let live = self.live_vmm(&rec);
        let not_running = |what: &str| {
            failure(
                format!("Cannot {what} instance {uuid}: it is not running"),
                String::new(),
            )
        };
        match &req.action {
            Action::Stop { shutdown_timeout_s } => {
                if let Some(h) = self.take_vmm(&rec.vmm_id) {
                    let timeout = Duration::from_secs(*shutdown_timeout_s);
                    let exit = h.stop((!timeout.is_zero()).then_some(timeout)).await;
                    tracing::info!(code = ?exit.code, "instance stopped");
                }
                self.remove_sockets(&rec.vmm_id);
                rec.intent = Intent::Stopped;
                self.store
                    .save(&rec)
                    .map_err(|e| host_failure("Recording the instance failed", error_chain(&e)))?;
                Ok(ActionOutcome {
                    vmm_id: None,
                    power_state: PowerState::Shutdown,
                })
            }
            Action::Start { vmm_id } => {
                check_uuid(vmm_id).map_err(|e| failure(e.to_string(), String::new()))?;
                if let Some(h) = &live {
                    if h.vmm_id() == vmm_id {
                        return Ok(ActionOutcome {
                            vmm_id: Some(vmm_id.clone()),
                            power_state: self.power_state(&rec).1,
                        });
                    }
                    return Err(failure(
                        format!("Instance {uuid} is already running (VMM {})", h.vmm_id()),
                        String::new(),
                    ));
                }
                self.start_vmm(&mut rec, vmm_id).await
            }
            Action::Reboot {
                hard,
                vmm_id,
                shutdown_timeout_s,
            } => {
                if !hard {
                    let Some(h) = &live else {
                        return Err(not_running("reboot"));
                    };
                    let boots = h.info().await.map(|i| i.boots).unwrap_or(0);
                    let timeout = if *shutdown_timeout_s > 0 {
                        Duration::from_secs(*shutdown_timeout_s)
                    } else {
                        default_timeout
                    };
                    if h.reboot_soft().await.is_ok() {
                        let deadline = tokio::time::Instant::now() + timeout;
                        while tokio::time::Instant::now() < deadline {
                            if h.info().await.is_ok_and(|i| i.boots > boots) {
                                return Ok(ActionOutcome {
                                    vmm_id: Some(h.vmm_id().to_owned()),
                                    power_state: PowerState::Running,
                                });
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    tracing::warn!("the guest did not reboot in time: rebooting hard");
                }
                // Hard: a replayed request finds its VMM already running.
                if let Some(h) = &live
                    && h.vmm_id() == vmm_id
                    && *hard
                {
                    return Ok(ActionOutcome {
                        vmm_id: Some(vmm_id.clone()),
                        power_state: PowerState::Running,
                    });
                }
                check_uuid(vmm_id).map_err(|e| failure(e.to_string(), String::new()))?;
                if let Some(h) = self.take_vmm(&rec.vmm_id) {
                    h.stop(None).await;
                }
                self.remove_sockets(&rec.vmm_id);
                self.start_vmm(&mut rec, vmm_id).await
            }
            Action::Pause | Action::Suspend | Action::Unpause | Action::Resume => {
                let Some(h) = &live else {
                    return Err(not_running(req.action.name()));
                };
                let (state, intent) = match req.action {
                    Action::Pause => (RequestedState::Paused, Intent::Paused),
                    Action::Suspend => (RequestedState::Paused, Intent::Suspended),
                    _ => (RequestedState::Running, Intent::Running),
                };
                h.set_state(state).await.map_err(|e| {
                    host_failure(
                        format!("Cannot {} instance {uuid}", req.action.name()),
                        error_chain(&e),
                    )
                })?;
                rec.intent = intent;
                self.store
                    .save(&rec)
                    .map_err(|e| host_failure("Recording the instance failed", error_chain(&e)))?;
                Ok(ActionOutcome {
                    vmm_id: Some(rec.vmm_id.clone()),
                    power_state: self.power_state(&rec).1,
                })
            }
        }
    }

    /// At start: adopt what runs, settle what does not.
    async fn adopt_all(self: &Arc<Self>) {
        let (records, orphans) = self.store.all();
        for uuid in orphans {
            tracing::warn!(instance = %uuid, "instance folder without a record (an interrupted build): removed");
            let _ = self.store.remove(&uuid);
        }
        let mut known_vmms = HashSet::new();
        let mut adopted = Vec::new();
        for mut rec in records {
            known_vmms.insert(rec.vmm_id.clone());
            let uuid = rec.spec.uuid.clone();
            if rec.intent == Intent::Building {
                tracing::warn!(instance = %uuid, vmm = %rec.vmm_id, "a build was interrupted: undoing it");
                let _ = self.teardown(&rec.spec, &rec.vmm_id).await;
                self.emit(Event::BuildAborted {
                    instance_uuid: uuid,
                    vmm_id: rec.vmm_id.clone(),
                    attempt: rec.attempt,
                    failure: host_failure(
                        format!(
                            "The build was interrupted by a restart of the compute agent on {}",
                            self.host
                        ),
                        String::new(),
                    ),
                });
                continue;
            }
            let sock = self.api_sock(&rec.vmm_id);
            if sock.exists() {
                match VmmHandle::adopt(&sock, &rec.vmm_id, &uuid).await {
                    Ok(h) => {
                        if rec.intent == Intent::Stopped {
                            // Stopping when the agent went away, or started
                            // behind its back: what runs wins.
                            rec.intent = Intent::Running;
                            let _ = self.store.save(&rec);
                        }
                        self.register(&rec, h);
                        adopted.push(rec);
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(instance = %uuid, vmm = %rec.vmm_id, error = %e, "VMM not adopted")
                    }
                }
            }
            let _ = std::fs::remove_file(&sock);
            let _ = std::fs::remove_file(self.serial_sock(&rec.vmm_id));
            let _ = std::fs::remove_file(self.vnc_sock(&rec.vmm_id));
            if rec.intent != Intent::Stopped {
                tracing::warn!(instance = %uuid, vmm = %rec.vmm_id, "the VMM ended while the agent was away: the instance is stopped");
                rec.intent = Intent::Stopped;
                let _ = self.store.save(&rec);
                self.emit(Event::PowerState {
                    instance_uuid: uuid,
                    vmm_id: None,
                    power_state: PowerState::Shutdown,
                });
            }
        }
        // What the adopted instances need may have gone while the agent was
        // away (a DHCP server killed, a ruleset flushed): make it again.
        let mut networks: BTreeMap<String, mica_rpc::compute::NetworkSpec> = BTreeMap::new();
        for rec in &adopted {
            for port in &rec.spec.ports {
                networks.insert(port.network.id.clone(), port.network.clone());
            }
        }
        for (id, net) in &networks {
            if let Err(e) = self.net.ensure_network(net, &self.dhcp_hosts(id)).await {
                tracing::error!(network = %id, error = %error_chain(&e), "cannot restore a network of running instances");
            }
        }
        for rec in &adopted {
            for port in rec.spec.ports.iter().filter(|p| self.net.tap_exists(&p.id)) {
                if let Err(e) = self.net.apply_firewall(port, &port.security_groups).await {
                    tracing::error!(instance = %rec.spec.uuid, port = %port.id, error = %error_chain(&e), "cannot restore a port's firewall");
                }
            }
        }
        // VMMs nobody knows of are left alone (never killed behind an
        // operator's back), but said.
        if let Ok(entries) = std::fs::read_dir(self.cfg.agent.run_dir.join("vmm")) {
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".sock")
                    && !known_vmms.contains(id)
                {
                    tracing::warn!(vmm = %id, "a VMM socket that belongs to no instance on this host");
                }
            }
        }
    }
}

impl Backend for VmmBackend {
    async fn start(&self, events: EventSender) -> Result<(), Failure> {
        let _ = self.inner.events.set(events);
        if !self.inner.cfg.vmm.kernel.is_file() {
            tracing::warn!(kernel = %self.inner.cfg.vmm.kernel.display(), "the guest kernel (vmm.kernel) does not exist: builds will fail");
        }
        let _ = self.inner.host_ip.set(first_global_ipv4().await);
        self.inner.adopt_all().await;
        Ok(())
    }

    async fn resources(&self) -> Result<Resources, Failure> {
        let cap = resources::probe(&self.inner.cfg.agent.state_dir)
            .map_err(|e| host_failure("Reading the host's resources failed", error_chain(&e)))?;
        let running = self
            .inner
            .vmms
            .lock()
            .expect("vmms")
            .values()
            .filter(|h| !matches!(h.status(), VmmStatus::Exited(_)))
            .count() as u32;
        let host_ip = self.inner.host_ip.get().cloned().unwrap_or_default();
        Ok(resources::report(
            &cap,
            &self.inner.cfg.resources,
            &self.inner.traits,
            &self.inner.cpu_model,
            &host_ip,
            running,
        ))
    }

    async fn build(&self, req: &BuildRequest) -> Result<PowerState, Failure> {
        let inner = &self.inner;
        let uuid = &req.instance.uuid;
        for (what, id) in [
            ("instance uuid", uuid.as_str()),
            ("VMM id", req.vmm_id.as_str()),
        ] {
            if check_uuid(id).is_err() {
                return Err(failure(format!("Invalid {what} {id:?}"), String::new()));
            }
        }
        if req.instance.flavor.vcpus == 0 || req.instance.flavor.memory_mb < 32 {
            return Err(failure(
                "The flavor needs at least 1 vCPU and 32 MB of memory",
                String::new(),
            ));
        }
        let _guard = inner.locks.lock(uuid).await;
        match inner.store.load(uuid) {
            Ok(Some(rec)) => {
                if rec.vmm_id == req.vmm_id
                    && rec.intent != Intent::Building
                    && inner.live_vmm(&rec).is_some()
                {
                    tracing::info!("build already done (a repeated request)");
                    return Ok(inner.power_state(&rec).1);
                }
                tracing::info!(old_vmm = %rec.vmm_id, "leftovers of an earlier attempt: removing them first");
                inner.teardown(&rec.spec, &rec.vmm_id).await?;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "unreadable record: removing the instance's leftovers");
                let _ = inner.teardown(&req.instance, &req.vmm_id).await;
            }
        }
        match inner.build(req).await {
            Ok(state) => Ok(state),
            Err(e) => {
                let f = e.to_failure(&inner.host);
                tracing::error!(error = %f.details, "build failed: undoing it");
                if let Err(undo) = inner.teardown(&req.instance, &req.vmm_id).await {
                    tracing::error!(message = %undo.message, details = %undo.details, "undoing the build left something behind");
                }
                Err(f)
            }
        }
    }

    async fn terminate(&self, req: &TerminateRequest) -> Result<(), Failure> {
        let inner = &self.inner;
        check_uuid(&req.instance_uuid).map_err(|e| failure(e.to_string(), String::new()))?;
        let _guard = inner.locks.lock(&req.instance_uuid).await;
        let rec = match inner.store.load(&req.instance_uuid) {
            Ok(Some(rec)) => rec,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable record: removing the folder");
                return inner.store.remove(&req.instance_uuid).map_err(|e| {
                    host_failure("Removing the instance's files failed", error_chain(&e))
                });
            }
        };
        if req.shutdown_timeout_s > 0
            && let Some(h) = inner.take_vmm(&rec.vmm_id)
        {
            h.stop(Some(Duration::from_secs(req.shutdown_timeout_s)))
                .await;
        }
        inner.teardown(&rec.spec, &rec.vmm_id).await
    }

    async fn power_action(&self, req: &PowerActionRequest) -> Result<ActionOutcome, Failure> {
        check_uuid(&req.instance_uuid).map_err(|e| failure(e.to_string(), String::new()))?;
        self.inner.power_action(req).await
    }

    async fn apply_port_security(&self, req: &PortSecurityRequest) -> Result<(), Failure> {
        let inner = &self.inner;
        check_uuid(&req.instance_uuid).map_err(|e| failure(e.to_string(), String::new()))?;
        let _guard = inner.locks.lock(&req.instance_uuid).await;
        let mut rec = inner
            .store
            .load(&req.instance_uuid)
            .map_err(|e| host_failure("Reading the instance's record failed", error_chain(&e)))?
            .ok_or_else(|| {
                failure(
                    format!(
                        "Instance {} is not on host {}",
                        req.instance_uuid, inner.host
                    ),
                    String::new(),
                )
            })?;
        let Some(port) = rec.spec.ports.iter_mut().find(|p| p.id == req.port_id) else {
            return Err(failure(
                format!(
                    "Port {} is not attached to instance {}",
                    req.port_id, req.instance_uuid
                ),
                String::new(),
            ));
        };
        port.security_groups = req.security_groups.clone();
        let port = port.clone();
        inner
            .store
            .save(&rec)
            .map_err(|e| host_failure("Recording the instance failed", error_chain(&e)))?;
        if inner.net.tap_exists(&port.id) {
            inner
                .net
                .apply_firewall(&port, &port.security_groups)
                .await
                .map_err(|e| {
                    host_failure("Applying the security groups failed", error_chain(&e))
                })?;
        }
        Ok(())
    }

    async fn console_output(&self, req: &ConsoleOutputRequest) -> Result<String, Failure> {
        let inner = &self.inner;
        let paths = inner
            .paths(&req.instance_uuid)
            .map_err(|e| failure(e.to_string(), String::new()))?;
        if !paths.dir.exists() {
            return Err(failure(
                format!(
                    "Instance {} is not on host {}",
                    req.instance_uuid, inner.host
                ),
                String::new(),
            ));
        }
        let mut text = String::new();
        for p in [paths.console.with_extension("log.1"), paths.console.clone()] {
            if let Ok(bytes) = std::fs::read(&p) {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        Ok(tail_lines(&text, req.length))
    }

    async fn console_socket(
        &self,
        instance_uuid: &str,
        kind: ConsoleKind,
    ) -> Result<PathBuf, Failure> {
        let inner = &self.inner;
        let not_here = || {
            failure(
                format!("Instance {instance_uuid} is not on host {}", inner.host),
                String::new(),
            )
        };
        let rec = match inner.store.load(instance_uuid) {
            Ok(Some(rec)) => rec,
            Ok(None) | Err(StoreError::BadUuid(_)) => return Err(not_here()),
            Err(e) => return Err(host_failure("Reading the instance failed", error_chain(&e))),
        };
        if inner.live_vmm(&rec).is_none() {
            return Err(failure(
                format!("Instance {instance_uuid} is not running"),
                String::new(),
            ));
        }
        let socket = match kind {
            ConsoleKind::Serial => inner.serial_sock(&rec.vmm_id),
            ConsoleKind::Vnc => inner.vnc_sock(&rec.vmm_id),
        };
        if !socket.exists() {
            let message = match kind {
                ConsoleKind::Vnc => "This instance has no VNC console (its VMM serves no display)",
                ConsoleKind::Serial => "This instance has no serial console socket",
            };
            return Err(failure(message, socket.display().to_string()));
        }
        Ok(socket)
    }

    async fn instances(&self) -> Vec<HostInstance> {
        let (records, _) = self.inner.store.all();
        records
            .iter()
            .map(|rec| {
                let (vmm_id, power_state) = self.inner.power_state(rec);
                HostInstance {
                    instance_uuid: rec.spec.uuid.clone(),
                    vmm_id,
                    power_state,
                }
            })
            .collect()
    }

    async fn housekeeping(&self) {
        let (records, _) = self.inner.store.all();
        let in_use: HashSet<String> = records.iter().map(|r| r.spec.image.id.clone()).collect();
        let max_age = Duration::from_secs(self.inner.cfg.images.remove_unused_after_s);
        let removed = self.inner.images.cleanup(&in_use, max_age).await;
        if !removed.is_empty() {
            tracing::info!(count = removed.len(), "image cache cleaned");
        }
    }
}

/// The last `n` lines of `text` (all with `None`).
pub fn tail_lines(text: &str, n: Option<u32>) -> String {
    let Some(n) = n else {
        return text.to_owned();
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n as usize);
    let mut out = lines[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tails() {
        let t = "a\nb\nc\n";
        assert_eq!(tail_lines(t, None), t);
        assert_eq!(tail_lines(t, Some(2)), "b\nc\n");
        assert_eq!(tail_lines(t, Some(10)), t);
        assert_eq!(tail_lines(t, Some(0)), "");
    }
}
