//! The controller: the VMM's main thread. It owns the VM's lifecycle and is the
//! only place that changes it: actions from the control socket, events from the
//! guest (power-off, reset, a failed vCPU) and signals all arrive on one channel
//! and are handled here in order.
//!
//! ```text
//!                 PUT state=paused
//!       running ───────────────────► paused
//!       │  ▲  ◄───────────────────   │
//!       │  │     PUT state=running   │
//!       │  │                         │
//!       │  └─ POST reboot: Ctrl-Alt-Del (soft) or reset (hard), then a new
//!       │     boot in this process (the guest's reset comes back as an event)
//!       │
//!       │ POST shutdown {timeout_s}: ACPI power button
//!       ▼
//!  shutting_down ── guest powers off ─────────────┐
//!       │ timeout: stopped (exit code 4)          │
//!       ▼                                         ▼
//!    stopped ◄── POST stop, SIGTERM/SIGINT ── any state; guest power-off (exit 0);
//!                guest reset nobody asked for (exit 3); vCPU failure (exit 1)
//! ```
//!
//! Pause, resume and shutdown while shutting down, shutdown and reboot while
//! paused are conflicts (HTTP 409). Asking for the state the VM is already in
//! is not an error.

use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use mica_vmm_api::{RequestedState, VmConfig, VmInfo, VmState, exit_code};

use crate::api::server::ApiServer;
use crate::api::{ActionError, ActionOk, ActionResult, VmmAction};
use crate::builder::{self, BuildError, MicroVm, Shared};
use crate::cli::RunOptions;
use crate::devices::display::Framebuffer;
use crate::devices::legacy::SerialBackend;
use crate::metrics::VmmMetrics;
use crate::vnc::{Display, Listeners, VncServer};

/// Everything the controller reacts to.
#[derive(Debug)]
pub enum VmEvent {
    /// A control-socket action and where to send its result.
    Action(VmmAction, Sender<ActionResult>),
    /// Something the guest (or KVM on its behalf) did, during boot number `boot`.
    Guest { boot: u32, event: GuestEvent },
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// A VNC viewer typed Ctrl-Alt-Del: the guest's coming reset is a reboot.
    ConsoleRebootRequested,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEvent {
    PowerOff,
    Reset(ResetSource),
    VcpuFailed { index: u32, reason: String },
}

/// How the guest reset itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSource {
    /// The i8042's reset line (`reboot=k`, the kernel's fallback).
    I8042,
    /// The FADT's reset register.
    Acpi,
    /// A triple fault (`reboot=t`, or a crash).
    TripleFault,
    /// A KVM system event.
    Kvm,
}

impl std::fmt::Display for ResetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResetSource::I8042 => "i8042 reset line",
            ResetSource::Acpi => "ACPI reset register",
            ResetSource::TripleFault => "triple fault",
            ResetSource::Kvm => "KVM system event",
        })
    }
}

/// How devices and vCPU threads of one boot report guest events.
#[derive(Debug, Clone)]
pub struct GuestEvents {
    tx: Sender<VmEvent>,
    boot: u32,
}

impl GuestEvents {
    pub fn new(tx: Sender<VmEvent>, boot: u32) -> Self {
        Self { tx, boot }
    }

    pub fn send(&self, event: GuestEvent) {
        let _ = self.tx.send(VmEvent::Guest {
            boot: self.boot,
            event,
        });
    }

    /// A sender whose events a test reads from the returned receiver.
    #[cfg(test)]
    pub fn for_test() -> (Self, Receiver<VmEvent>) {
        let (tx, rx) = mpsc::channel();
        (Self::new(tx, 1), rx)
    }
}

/// Why the VMM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    PoweredOff,
    Stopped,
    Signal(i32),
    GuestReset(ResetSource),
    ShutdownTimeout,
    Failed(String),
}

impl ExitReason {
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::PoweredOff | ExitReason::Stopped | ExitReason::Signal(_) => exit_code::OK,
            ExitReason::GuestReset(_) => exit_code::GUEST_RESET,
            ExitReason::ShutdownTimeout => exit_code::SHUTDOWN_TIMEOUT,
            ExitReason::Failed(_) => exit_code::ERROR,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PoweredOff => write!(f, "the guest powered off"),
            ExitReason::Stopped => write!(f, "stopped through the control socket"),
            ExitReason::Signal(s) => write!(f, "stopped by signal {s}"),
            ExitReason::GuestReset(src) => write!(f, "guest requested reset ({src})"),
            ExitReason::ShutdownTimeout => {
                write!(f, "the guest did not shut down in time; stopped")
            }
            ExitReason::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{}: {why}", path.display())]
    SocketPath { path: PathBuf, why: String },
    #[error("cannot listen on {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the control socket thread")]
    Api(#[source] std::io::Error),
    #[error("cannot handle signals")]
    Signals(#[source] std::io::Error),
    #[error("serial console")]
    Serial(#[from] crate::devices::legacy::serial::SerialError),
    #[error("building the VM")]
    Build(#[from] BuildError),
    #[error("framebuffer")]
    Framebuffer(#[from] crate::devices::display::FramebufferError),
    #[error("cannot listen for VNC viewers on {addr}")]
    VncTcp {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the VNC server")]
    Vnc(#[source] std::io::Error),
}

/// A socket file the VMM created; removed when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Makes `path` free for a new socket: a stale socket (nothing listening) is
/// removed; a live one, or any other file, is an error.
fn free_socket_path(path: &Path) -> Result<(), LaunchError> {
    let err = |why: String| LaunchError::SocketPath {
        path: path.to_path_buf(),
        why,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e.to_string())),
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(err("another process is listening on it".into())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!("removing the stale socket {}", path.display());
                std::fs::remove_file(path).map_err(|e| err(e.to_string()))
            }
            Err(e) => Err(err(e.to_string())),
        },
        Ok(_) => Err(err("exists and is not a socket".into())),
    }
}

/// Blocks the termination signals in this thread and so in every thread it
/// starts later; [`spawn_signal_thread`] then turns them into events.
fn block_signals() -> Result<libc::sigset_t, LaunchError> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(LaunchError::Signals(std::io::Error::from_raw_os_error(ret)));
    }
    Ok(set)
}

/// Waits for the blocked termination signals (a signal that came earlier is
/// pending and is taken at once) and sends them to the controller.
fn spawn_signal_thread(set: libc::sigset_t, tx: Sender<VmEvent>) -> Result<(), LaunchError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig = 0;
                // SAFETY: `set` is initialised and blocked in this thread;
                // `sig` is a valid place for the result.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0
                    && tx.send(VmEvent::Signal(sig)).is_err()
                {
                    return;
                }
            }
        })
        .map_err(LaunchError::Signals)?;
    Ok(())
}

/// Starts the VM and runs it to its end.
pub fn launch(
    config: VmConfig,
    opts: &RunOptions,
    process_started: Instant,
) -> Result<ExitReason, LaunchError> {
    let t_launch = process_started.elapsed();
    let (tx, rx) = mpsc::channel();
    let signals = block_signals()?;

    // Sockets first: a path in use is reported before any work.
    let mut socket_files = Vec::new();
    let listener = match &opts.api_sock {
        Some(path) => {
            free_socket_path(path)?;
            let l = UnixListener::bind(path).map_err(|source| LaunchError::Bind {
                path: path.clone(),
                source,
            })?;
            socket_files.push(SocketFile(path.clone()));
            Some(l)
        }
        None => None,
    };
    if let Some(path) = &config.serial.socket {
        free_socket_path(path)?;
    }
    let metrics = Arc::new(VmmMetrics::default());
    let serial = SerialBackend::new(
        config.serial.log.as_deref(),
        config.serial.log_max_bytes,
        config.serial.socket.as_deref(),
        metrics.serial.clone(),
    )?;
    if let Some(path) = &config.serial.socket {
        socket_files.push(SocketFile(path.clone()));
    }
    let (display, mut vnc) = match &config.display {
        Some(d) => {
            let mut listeners = Listeners::default();
            if let Some(path) = &d.vnc_socket {
                free_socket_path(path)?;
                let l = UnixListener::bind(path).map_err(|source| LaunchError::Bind {
                    path: path.clone(),
                    source,
                })?;
                socket_files.push(SocketFile(path.clone()));
                listeners.unix = Some(l);
            }
            if let Some(addr) = d.vnc_tcp {
                let l = std::net::TcpListener::bind(addr)
                    .map_err(|source| LaunchError::VncTcp { addr, source })?;
                listeners.tcp = Some(l);
            }
            let fb = Framebuffer::new(d.width, d.height)?;
            let display = Arc::new(
                Display::new(fb, metrics.display.clone(), tx.clone()).map_err(LaunchError::Vnc)?,
            );
            let name = opts.id.clone().unwrap_or_else(|| "mica".into());
            let server =
                VncServer::start(display.clone(), listeners, name).map_err(LaunchError::Vnc)?;
            (Some(display), Some(server))
        }
        None => (None, None),
    };
    let shared = Shared::new(metrics, Arc::new(serial), display)?;
    let t_shared = process_started.elapsed();
    let vm = builder::build(
        &config,
        &shared,
        GuestEvents::new(tx.clone(), 1),
        process_started,
    )?;
    let t_built = process_started.elapsed();
    let mut api = match listener {
        Some(l) => Some(ApiServer::start(l, tx.clone()).map_err(LaunchError::Api)?),
        None => None,
    };
    spawn_signal_thread(signals, tx.clone())?;
    tracing::debug!(
        launch_us = t_launch.as_micros() as u64,
        kvm_ready_us = t_shared.as_micros() as u64,
        vm_started_us = t_built.as_micros() as u64,
        api_us = process_started.elapsed().as_micros() as u64,
        "start-up timeline (since main)"
    );

    let mut controller = Controller {
        config,
        id: opts.id.clone(),
        process_started,
        shared,
        tx,
        vm: Some(vm),
        state: VmState::Running,
        shutdown_deadline: None,
        reboot_requested: false,
        boots: 1,
    };
    let reason = controller.run(&rx);
    // Answer nothing more, then remove the sockets (SocketFile drops).
    if let Some(api) = &mut api {
        api.stop();
    }
    if let Some(vnc) = &mut vnc {
        vnc.stop();
    }
    controller.shared.serial.flush();
    drop(socket_files);
    Ok(reason)
}

struct Controller {
    config: VmConfig,
    id: Option<String>,
    process_started: Instant,
    shared: Shared,
    tx: Sender<VmEvent>,
    vm: Option<MicroVm>,
    state: VmState,
    shutdown_deadline: Option<Instant>,
    reboot_requested: bool,
    boots: u32,
}

impl Controller {
    fn run(&mut self, rx: &Receiver<VmEvent>) -> ExitReason {
        loop {
            let event = match self.shutdown_deadline {
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(e) => e,
                        Err(RecvTimeoutError::Timeout) => {
                            return self.finish(ExitReason::ShutdownTimeout);
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            return self.finish(ExitReason::Failed("event channel closed".into()));
                        }
                    }
                }
                None => match rx.recv() {
                    Ok(e) => e,
                    Err(_) => {
                        return self.finish(ExitReason::Failed("event channel closed".into()));
                    }
                },
            };
            match event {
                VmEvent::Action(action, reply) => {
                    let (result, exit) = self.handle(action);
                    if let Some(reason) = exit {
                        let reason = self.finish(reason);
                        let _ = reply.send(result);
                        return reason;
                    }
                    let _ = reply.send(result);
                }
                VmEvent::Guest { boot, event } if boot == self.boots => match event {
                    GuestEvent::PowerOff => return self.finish(ExitReason::PoweredOff),
                    GuestEvent::Reset(source) if self.reboot_requested => {
                        tracing::info!("guest reset ({source}) as requested: booting again");
                        if let Err(e) = self.reboot() {
                            return self.finish(ExitReason::Failed(format!("reboot: {e}")));
                        }
                    }
                    GuestEvent::Reset(source) => {
                        return self.finish(ExitReason::GuestReset(source));
                    }
                    GuestEvent::VcpuFailed { index, reason } => {
                        return self.finish(ExitReason::Failed(format!("vCPU {index}: {reason}")));
                    }
                },
                VmEvent::Guest { boot, event } => {
                    tracing::debug!("ignoring {event:?} from boot {boot}");
                }
                VmEvent::Signal(sig) => return self.finish(ExitReason::Signal(sig)),
                VmEvent::ConsoleRebootRequested => {
                    if self.state == VmState::Running {
                        tracing::info!("reboot requested: Ctrl-Alt-Del typed on the VNC console");
                        self.reboot_requested = true;
                    }
                }
            }
        }
    }

    /// Carries out an action; the second value ends the VMM.
    fn handle(&mut self, action: VmmAction) -> (ActionResult, Option<ExitReason>) {
        use VmState::*;
        let conflict = |m: &str| Err(ActionError::Conflict(m.to_string()));
        let result = match action {
            VmmAction::GetVm => Ok(ActionOk::Vm(Box::new(self.info()))),
            VmmAction::GetMetrics => {
                Ok(ActionOk::Metrics(Box::new(self.shared.metrics.snapshot())))
            }
            VmmAction::Stop => {
                return (Ok(ActionOk::Done(Stopped)), Some(ExitReason::Stopped));
            }
            VmmAction::SetState(wanted) => match (self.state, wanted) {
                (Running, RequestedState::Running) | (Paused, RequestedState::Paused) => {
                    Ok(ActionOk::Done(self.state))
                }
                (Running, RequestedState::Paused) => match self.vm().pause() {
                    Ok(()) => {
                        self.state = Paused;
                        tracing::info!("paused");
                        Ok(ActionOk::Done(Paused))
                    }
                    Err(e) => Err(ActionError::Failed(format!("pause: {e}"))),
                },
                (Paused, RequestedState::Running) => {
                    self.vm().resume();
                    self.state = Running;
                    tracing::info!("resumed");
                    Ok(ActionOk::Done(Running))
                }
                (ShuttingDown, _) => conflict("the VM is shutting down"),
                (Stopped, _) => conflict("the VM is stopped"),
            },
            VmmAction::Shutdown(req) => match self.state {
                Running => match self.vm().press_power_button() {
                    Ok(()) => {
                        self.state = ShuttingDown;
                        self.shutdown_deadline =
                            Some(Instant::now() + Duration::from_secs(req.timeout_s));
                        tracing::info!(
                            "shutting down: power button pressed, {} s until a hard stop",
                            req.timeout_s
                        );
                        Ok(ActionOk::Accepted(ShuttingDown))
                    }
                    Err(e) => Err(ActionError::Failed(format!("power button: {e}"))),
                },
                Paused => conflict("the VM is paused; resume it first"),
                ShuttingDown => conflict("the VM is already shutting down"),
                Stopped => conflict("the VM is stopped"),
            },
            VmmAction::Reboot(req) => match self.state {
                Running if req.hard => match self.reboot() {
                    Ok(()) => Ok(ActionOk::Accepted(Running)),
                    Err(e) => {
                        return (
                            Err(ActionError::Failed(format!("reboot: {e}"))),
                            Some(ExitReason::Failed(format!("reboot: {e}"))),
                        );
                    }
                },
                Running => {
                    self.vm().ctrl_alt_del();
                    self.reboot_requested = true;
                    tracing::info!("reboot requested: Ctrl-Alt-Del sent to the guest");
                    Ok(ActionOk::Accepted(Running))
                }
                Paused => conflict("the VM is paused; resume it first"),
                ShuttingDown => conflict("the VM is shutting down"),
                Stopped => conflict("the VM is stopped"),
            },
        };
        (result, None)
    }

    fn vm(&self) -> &MicroVm {
        self.vm
            .as_ref()
            .expect("a VM exists until the controller finishes")
    }

    fn info(&self) -> VmInfo {
        VmInfo {
            state: self.state,
            id: self.id.clone(),
            pid: std::process::id(),
            uptime_ms: self.process_started.elapsed().as_millis() as u64,
            boot_time_ms: self
                .vm
                .as_ref()
                .and_then(MicroVm::boot_time)
                .map(|d| d.as_secs_f64() * 1000.0),
            boots: self.boots,
            config: self.config.clone(),
        }
    }

    /// Replaces the running boot with a fresh one.
    fn reboot(&mut self) -> Result<(), BuildError> {
        let started = Instant::now();
        if let Some(vm) = self.vm.take() {
            vm.stop();
        }
        self.boots += 1;
        self.reboot_requested = false;
        let vm = builder::build(
            &self.config,
            &self.shared,
            GuestEvents::new(self.tx.clone(), self.boots),
            started,
        )?;
        self.vm = Some(vm);
        self.state = VmState::Running;
        tracing::info!(boot = self.boots, "rebooted");
        Ok(())
    }

    fn finish(&mut self, reason: ExitReason) -> ExitReason {
        self.state = VmState::Stopped;
        if let Some(vm) = self.vm.take() {
            vm.stop();
        }
        match &reason {
            ExitReason::Failed(_) => tracing::error!("VM stopped: {reason}"),
            _ => tracing::info!("VM stopped: {reason}"),
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::PoweredOff.code(), 0);
        assert_eq!(ExitReason::GuestReset(ResetSource::I8042).code(), 3);
        assert_eq!(ExitReason::ShutdownTimeout.code(), 4);
        assert_eq!(ExitReason::Failed("x".into()).code(), 1);
        assert_eq!(
            ExitReason::GuestReset(ResetSource::I8042).to_string(),
            "guest requested reset (i8042 reset line)"
        );
    }

    #[test]
    fn stale_sockets_are_replaced_live_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        free_socket_path(&path).unwrap();
        let live = UnixListener::bind(&path).unwrap();
        assert!(free_socket_path(&path).is_err());
        drop(live);
        // The file stays behind, like after a SIGKILL.
        assert!(path.exists());
        free_socket_path(&path).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, "x").unwrap();
        let e = free_socket_path(&path).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
    }
}
