//! The VMM runner: one actor per mica-vmm process, keyed by the VMM id.
//!
//! ```text
//!   VmmHandle ──Command──► actor task ── select! over ──┬─ the process's pidfd (it exited)
//!      ▲  (clone-free,            │                     ├─ requests (pause, resume, reboot, stop)
//!      │   one per VMM)           │                     ├─ the hard-stop deadline
//!      └──── watch: VmmStatus ◄───┘                     └─ a poll of GET /vm (paused? running?)
//! ```
//!
//! [`VmmHandle::spawn`] starts `mica-vmm` in a session of its own (so it
//! survives the agent and its signals), with its output appended to a log,
//! and returns once the control socket reports the VM running.
//! [`VmmHandle::adopt`] takes over a VMM found running after an agent
//! restart, by its control socket. A stop asks the guest first (the ACPI power
//! button, `POST /vm/shutdown`, which the VMM itself ends after the timeout)
//! and kills the process through its pidfd if it is still there a few seconds
//! later; a hard stop is `POST /vm/stop`, then the same kill. The process is
//! watched through a pidfd, which also works for adopted VMMs that are not
//! the agent's children, and cannot signal a stranger that reused the pid.

pub mod client;

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mica_vmm_api::{RequestedState, VmInfo, VmState, exit_code};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument as _;

pub use client::{ClientError, VmmClient};

use crate::sys::PidFd;

/// How long after a stop's deadline (or a hard stop) the process is killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often the actor asks the VMM for its state.
const POLL: Duration = Duration::from_secs(2);

/// How to start a VMM.
#[derive(Debug, Clone)]
pub struct VmmLaunch {
    pub vmm_id: String,
    pub instance_uuid: String,
    pub binary: PathBuf,
    /// The VM configuration, already written.
    pub config: PathBuf,
    pub api_sock: PathBuf,
    /// The VMM's stdout and stderr are appended here.
    pub log: PathBuf,
    pub log_level: String,
    /// How long it may take to answer as running.
    pub start_timeout: Duration,
}

/// How a VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, when the VMM was this agent's child.
    pub code: Option<i32>,
    /// The signal that killed it, when the VMM was this agent's child.
    pub signal: Option<i32>,
    /// Whether a stop was requested (else it died, or the guest powered off
    /// or reset on its own).
    pub requested: bool,
}

impl Exit {
    /// The guest asked for a reset nobody requested: it wants to reboot.
    pub fn guest_reset(&self) -> bool {
        !self.requested && self.code == Some(exit_code::GUEST_RESET)
    }
}

/// What the actor last knew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmStatus {
    Running,
    Paused,
    ShuttingDown,
    Exited(Exit),
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot start {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch VMM process {pid}")]
    Watch {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("mica-vmm exited during start ({}): {log_tail}", describe_exit(*.code, *.signal))]
    ExitedAtStart {
        code: Option<i32>,
        signal: Option<i32>,
        log_tail: String,
    },
    #[error("mica-vmm did not report a running VM within {after:?}: {log_tail}")]
    StartTimeout { after: Duration, log_tail: String },
    #[error("the VMM {vmm_id} is not running")]
    Gone { vmm_id: String },
    #[error("the VMM at {sock} is {found:?}, not {expected}")]
    WrongVmm {
        sock: PathBuf,
        expected: String,
        found: Option<String>,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

enum Command {
    Stop {
        graceful: Option<Duration>,
        reply: oneshot::Sender<Exit>,
    },
    SetState {
        state: RequestedState,
        reply: oneshot::Sender<Result<VmState, ClientError>>,
    },
    Reboot {
        reply: oneshot::Sender<Result<VmState, ClientError>>,
    },
}

/// A running VMM. Dropping the handle stops watching it; the VMM goes on.
pub struct VmmHandle {
    vmm_id: String,
    client: VmmClient,
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<VmmStatus>,
}

impl VmmHandle {
    /// Starts a VMM (see the module docs).
    pub async fn spawn(launch: VmmLaunch) -> Result<VmmHandle, RunnerError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(|source| RunnerError::Spawn {
                binary: launch.log.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| RunnerError::Spawn {
            binary: launch.log.clone(),
            source,
        })?;
        let mut cmd = std::process::Command::new(&launch.binary);
        cmd.arg("--config")
            .arg(&launch.config)
            .arg("--api-sock")
            .arg(&launch.api_sock)
            .arg("--id")
            .arg(&launch.vmm_id)
            .arg("--log-level")
            .arg(&launch.log_level)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        crate::sys::new_session(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| RunnerError::Spawn {
            binary: launch.binary.clone(),
            source,
        })?;
        let pid = child.id();
        let pidfd = match PidFd::open(pid) {
            Ok(fd) => fd,
            Err(source) => {
                let _ = child.kill();
                reap_in_background(child);
                return Err(RunnerError::Watch { pid, source });
            }
        };
        tracing::info!(vmm = %launch.vmm_id, pid, "mica-vmm started");
        let client = VmmClient::new(&launch.api_sock);
        let deadline = Instant::now() + launch.start_timeout;
        let state = loop {
            if pidfd.exited() {
                let status = child.wait().ok();
                return Err(RunnerError::ExitedAtStart {
                    code: status.and_then(|s| s.code()),
                    signal: status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
                    log_tail: log_tail(&launch.log),
                });
            }
            if let Ok(info) = client.info().await
                && matches!(info.state, VmState::Running | VmState::Paused)
            {
                break info.state;
            }
            if Instant::now() > deadline {
                let _ = pidfd.signal(libc::SIGKILL);
                // A process stuck in the kernel (KVM) may take its time to
                // die: never block the runtime on it.
                for _ in 0..500 {
                    if pidfd.exited() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                reap_in_background(child);
                return Err(RunnerError::StartTimeout {
                    after: launch.start_timeout,
                    log_tail: log_tail(&launch.log),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Ok(Self::start_actor(
            launch.vmm_id,
            launch.instance_uuid,
            pidfd,
            Some(child),
            client,
            state,
        ))
    }

    /// Takes over the VMM serving `api_sock`, which must be `vmm_id`.
    pub async fn adopt(
        api_sock: &Path,
        vmm_id: &str,
        instance_uuid: &str,
    ) -> Result<VmmHandle, RunnerError> {
        let client = VmmClient::new(api_sock);
        let info = client.info().await?;
        if info.id.as_deref() != Some(vmm_id) {
            return Err(RunnerError::WrongVmm {
                sock: api_sock.to_owned(),
                expected: vmm_id.to_owned(),
                found: info.id,
            });
        }
        let pidfd = PidFd::open(info.pid).map_err(|source| RunnerError::Watch {
            pid: info.pid,
            source,
        })?;
        // The pid could have been reused between the two calls: ask again
        // now that the descriptor pins the process.
        let again = client.info().await?;
        if again.pid != info.pid || pidfd.exited() {
            return Err(RunnerError::Gone {
                vmm_id: vmm_id.to_owned(),
            });
        }
        tracing::info!(vmm = %vmm_id, pid = info.pid, uptime_ms = info.uptime_ms, "adopted a running mica-vmm");
        Ok(Self::start_actor(
            vmm_id.to_owned(),
            instance_uuid.to_owned(),
            pidfd,
            None,
            client,
            again.state,
        ))
    }

    fn start_actor(
        vmm_id: String,
        instance_uuid: String,
        pidfd: PidFd,
        child: Option<std::process::Child>,
        client: VmmClient,
        state: VmState,
    ) -> VmmHandle {
        let (tx, rx) = mpsc::channel(8);
        let (status_tx, status) = watch::channel(status_of(state));
        let pid = pidfd.pid();
        let actor = Actor {
            pidfd,
            child,
            client: client.clone(),
            status: status_tx,
            requested: false,
            deadline: None,
            waiters: Vec::new(),
        };
        let span = tracing::info_span!("vmm", instance = %instance_uuid, vmm = %vmm_id, pid);
        tokio::spawn(actor.run(rx).instrument(span));
        VmmHandle {
            vmm_id,
            client,
            tx,
            status,
        }
    }

    pub fn vmm_id(&self) -> &str {
        &self.vmm_id
    }

    /// The last known status.
    pub fn status(&self) -> VmmStatus {
        self.status.borrow().clone()
    }

    /// `GET /vm`, live.
    pub async fn info(&self) -> Result<VmInfo, RunnerError> {
        Ok(self.client.info().await?)
    }

    /// Waits for the process to end.
    pub async fn wait_exit(&self) -> Exit {
        let mut rx = self.status.clone();
        let result = rx
            .wait_for(|s| matches!(s, VmmStatus::Exited(_)))
            .await
            .map(|s| s.clone());
        match result {
            Ok(VmmStatus::Exited(e)) => e,
            // The actor is gone without an exit: it stopped watching.
            _ => Exit {
                code: None,
                signal: None,
                requested: false,
            },
        }
    }

    /// Stops the VMM: gracefully within `graceful` (then hard), or hard at
    /// once with `None`. Returns how the process ended.
    pub async fn stop(&self, graceful: Option<Duration>) -> Exit {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Stop { graceful, reply })
            .await
            .is_err()
        {
            return self.wait_exit().await;
        }
        match rx.await {
            Ok(exit) => exit,
            Err(_) => self.wait_exit().await,
        }
    }

    /// Pauses or resumes the vCPUs.
    pub async fn set_state(&self, state: RequestedState) -> Result<VmState, RunnerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::SetState { state, reply })
            .await
            .map_err(|_| self.gone())?;
        Ok(rx.await.map_err(|_| self.gone())??)
    }

    /// Asks the guest to reboot (Ctrl-Alt-Del); it boots again in the same
    /// process.
    pub async fn reboot_soft(&self) -> Result<VmState, RunnerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Reboot { reply })
            .await
            .map_err(|_| self.gone())?;
        Ok(rx.await.map_err(|_| self.gone())??)
    }

    fn gone(&self) -> RunnerError {
        RunnerError::Gone {
            vmm_id: self.vmm_id.clone(),
        }
    }
}

/// Waits for a child on a thread of its own (it may not be dead yet), so it
/// does not stay a zombie and nobody async waits for it.
fn reap_in_background(mut child: std::process::Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
}

fn status_of(state: VmState) -> VmmStatus {
    match state {
        VmState::Running => VmmStatus::Running,
        VmState::Paused => VmmStatus::Paused,
        VmState::ShuttingDown | VmState::Stopped => VmmStatus::ShuttingDown,
    }
}

struct Actor {
    pidfd: PidFd,
    child: Option<std::process::Child>,
    client: VmmClient,
    status: watch::Sender<VmmStatus>,
    requested: bool,
    deadline: Option<Instant>,
    waiters: Vec<oneshot::Sender<Exit>>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let registered = self.pidfd.as_fd().try_clone_to_owned().and_then(|owned| {
            // SAFETY: `owned` is an open descriptor that the AsyncFd owns from
            // here on, so it stays open and is the same descriptor for the
            // AsyncFd's whole life.
            unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        let fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the VMM's pidfd; polling instead");
                return self.run_polling(rx).await;
            }
        };
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.deadline;
            tokio::select! {
                ready = fd.readable() => {
                    if let Ok(mut g) = ready {
                        g.retain_ready();
                    }
                    break;
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    // Every handle is gone: the agent no longer watches this
                    // VMM (it keeps running).
                    None if self.waiters.is_empty() => return,
                    None => {}
                },
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    tracing::warn!("the VMM did not stop in time: killing it");
                    let _ = self.pidfd.signal(libc::SIGKILL);
                    self.deadline = None;
                }
                _ = poll.tick() => self.refresh().await,
            }
        }
        self.finish();
    }

    /// Without a pollable pidfd (should not happen on Linux ≥ 5.3).
    async fn run_polling(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            if self.pidfd.exited() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(cmd)) => self.handle(cmd).await,
                Ok(None) if self.waiters.is_empty() => return,
                _ => {}
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                let _ = self.pidfd.signal(libc::SIGKILL);
                self.deadline = None;
            }
        }
        self.finish();
    }

    fn finish(mut self) {
        let (code, signal) = match self.child.take() {
            Some(mut child) => match child.wait() {
                Ok(s) => (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)),
                Err(_) => (None, None),
            },
            None => (None, None),
        };
        let exit = Exit {
            code,
            signal,
            requested: self.requested,
        };
        tracing::info!(code = ?exit.code, signal = ?exit.signal, requested = exit.requested, "mica-vmm exited");
        let _ = self.status.send(VmmStatus::Exited(exit.clone()));
        for w in self.waiters.drain(..) {
            let _ = w.send(exit.clone());
        }
    }

    async fn refresh(&mut self) {
        if let Ok(info) = self.client.info().await {
            let s = status_of(info.state);
            self.status.send_if_modified(|old| {
                if *old != s && !matches!(old, VmmStatus::Exited(_)) {
                    *old = s;
                    true
                } else {
                    false
                }
            });
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Stop { graceful, reply } => {
                self.waiters.push(reply);
                if self.requested && graceful.is_some() {
                    return; // already stopping
                }
                self.requested = true;
                let _ = self.status.send(VmmStatus::ShuttingDown);
                match graceful {
                    Some(t) if !t.is_zero() => {
                        let secs = t.as_secs().max(1);
                        match self.client.shutdown(secs).await {
                            Ok(_) => {
                                self.deadline =
                                    Some(Instant::now() + Duration::from_secs(secs) + KILL_GRACE);
                            }
                            Err(e) => {
                                // Paused VMs refuse a shutdown: stop them.
                                tracing::info!(error = %e, "graceful shutdown refused; stopping hard");
                                self.hard_stop().await;
                            }
                        }
                    }
                    _ => self.hard_stop().await,
                }
            }
            Command::SetState { state, reply } => {
                let r = self.client.set_state(state).await.map(|a| a.state);
                if let Ok(s) = &r {
                    let _ = self.status.send(status_of(*s));
                }
                let _ = reply.send(r);
            }
            Command::Reboot { reply } => {
                let r = self.client.reboot(false).await.map(|a| a.state);
                let _ = reply.send(r);
            }
        }
    }

    async fn hard_stop(&mut self) {
        if let Err(e) = self.client.stop().await {
            tracing::info!(error = %e, "the control socket did not stop the VM; killing it");
            let _ = self.pidfd.signal(libc::SIGKILL);
        }
        let kill_at = Instant::now() + KILL_GRACE;
        self.deadline = Some(self.deadline.map_or(kill_at, |d| d.min(kill_at)));
    }
}

/// The last 2 KiB of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_owned()
}
