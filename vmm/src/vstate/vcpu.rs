//! vCPUs: set-up of each vCPU's architectural state, and one thread per vCPU
//! running `KVM_RUN` and dispatching exits to the I/O buses.
//!
//! ```text
//!            pause()                       stop()
//!  Running ──────────► Paused ──────────► Finished (thread ends)
//!     ▲ ◄──────────────  │                   ▲
//!     │    resume()      │                   │
//!     └──── guest power-off, reset or error: the thread reports it and
//!           parks until stop()
//! ```
//!
//! A vCPU leaves `KVM_RUN` when another thread "kicks" it: the requester sets
//! the wanted state, then sends the thread a real-time signal whose handler sets
//! `kvm_run.immediate_exit`. Whether the signal lands before, during or after
//! `KVM_RUN`, the thread sees the new state before running guest code again.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::arch::{cpuid, interrupts, msr, regs};
use crate::devices::{Bus, lock};
use crate::metrics::VmmMetrics;
use crate::vmm::{GuestEvent, GuestEvents, ResetSource};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {0}")]
    Create(u32, #[source] kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error("MSRs")]
    Msr(#[from] msr::MsrError),
    #[error("registers")]
    Regs(#[from] regs::RegsError),
    #[error("local APIC")]
    Lapic(#[from] interrupts::LapicError),
    #[error("starting the vCPU thread")]
    Spawn(#[source] std::io::Error),
    #[error("registering the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    #[error("vCPUs did not pause within {0:?}")]
    PauseTimeout(Duration),
}

/// Sets up vCPU `index` of `count`: CPUID, MSRs, FPU, LAPIC; and for the boot
/// vCPU the long-mode registers with `rip = entry`. The others wait for the
/// guest's INIT/SIPI in the in-kernel LAPIC.
pub fn configure(
    fd: &VcpuFd,
    index: u32,
    count: u32,
    supported_cpuid: &CpuId,
    supported_msrs: &[u32],
    boot_entry: Option<u64>,
) -> Result<(), VcpuError> {
    let id = cpuid::vcpu_cpuid(supported_cpuid, index, count);
    fd.set_cpuid2(&id).map_err(VcpuError::Cpuid)?;
    msr::setup_msrs(fd, supported_msrs)?;
    regs::setup_fpu(fd)?;
    interrupts::set_lint(fd)?;
    if let Some(entry) = boot_entry {
        regs::setup_sregs(fd)?;
        regs::setup_regs(fd, entry)?;
    }
    Ok(())
}

/// What the vCPU threads share.
pub struct VcpuContext {
    pub pio: Bus,
    pub mmio: Bus,
    pub metrics: Arc<VmmMetrics>,
    pub events: GuestEvents,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum RunState {
    Running = 0,
    Paused = 1,
    Finished = 2,
}

impl RunState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => RunState::Running,
            1 => RunState::Paused,
            _ => RunState::Finished,
        }
    }
}

struct Parked {
    count: usize,
}

/// The wanted run state of all vCPUs, and how many are parked.
struct Control {
    wanted: AtomicU8,
    parked: Mutex<Parked>,
    cv: Condvar,
}

impl Control {
    fn wanted(&self) -> RunState {
        RunState::from_u8(self.wanted.load(Ordering::Acquire))
    }

    fn set(&self, state: RunState) {
        let _g = lock(&self.parked);
        self.wanted.store(state as u8, Ordering::Release);
        self.cv.notify_all();
    }

    /// Parks the calling vCPU while paused. `false` once it must finish.
    fn park(&self) -> bool {
        let mut p = lock(&self.parked);
        p.count += 1;
        self.cv.notify_all();
        loop {
            match self.wanted() {
                RunState::Running => {
                    p.count -= 1;
                    return true;
                }
                RunState::Finished => {
                    p.count -= 1;
                    return false;
                }
                RunState::Paused => {
                    p = self.cv.wait(p).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// Parks the calling vCPU until it must finish (after it reported the end of
    /// the guest). It counts as parked meanwhile.
    fn park_until_finished(&self) {
        let mut p = lock(&self.parked);
        p.count += 1;
        self.cv.notify_all();
        while self.wanted() != RunState::Finished {
            p = self.cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.count -= 1;
    }

    fn wait_parked(&self, n: usize, timeout: Duration) -> bool {
        let p = lock(&self.parked);
        let (_p, res) = self
            .cv
            .wait_timeout_while(p, timeout, |p| p.count < n)
            .unwrap_or_else(|e| e.into_inner());
        !res.timed_out()
    }
}

thread_local! {
    /// This vCPU thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` points into this thread's kvm_run mapping, set by the vCPU
        // thread before it first runs and cleared before the mapping goes away.
        // A volatile byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

fn kick_signal() -> i32 {
    SIGRTMIN()
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal);
    });
    result
}

/// The running vCPU threads.
pub struct Vcpus {
    threads: Vec<JoinHandle<()>>,
    control: Arc<Control>,
}

/// How long `pause` waits for every vCPU to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Vcpus {
    /// Starts one thread per vCPU, running.
    pub fn start(fds: Vec<VcpuFd>, ctx: Arc<VcpuContext>) -> Result<Self, VcpuError> {
        install_kick_handler()?;
        let control = Arc::new(Control {
            wanted: AtomicU8::new(RunState::Running as u8),
            parked: Mutex::new(Parked { count: 0 }),
            cv: Condvar::new(),
        });
        let mut vcpus = Self {
            threads: Vec::new(),
            control: control.clone(),
        };
        for (index, fd) in fds.into_iter().enumerate() {
            let (control, ctx) = (control.clone(), ctx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu_thread(fd, index as u32, &control, &ctx))
                .map_err(VcpuError::Spawn);
            match thread {
                Ok(t) => vcpus.threads.push(t),
                Err(e) => {
                    vcpus.stop();
                    return Err(e);
                }
            }
        }
        Ok(vcpus)
    }

    fn kick_all(&self) {
        for t in &self.threads {
            if !t.is_finished() {
                let _ = t.kill(kick_signal());
            }
        }
    }

    /// Stops every vCPU from running guest code; returns once all are parked.
    pub fn pause(&self) -> Result<(), VcpuError> {
        self.control.set(RunState::Paused);
        self.kick_all();
        if self.control.wait_parked(self.threads.len(), PAUSE_TIMEOUT) {
            Ok(())
        } else {
            Err(VcpuError::PauseTimeout(PAUSE_TIMEOUT))
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.control.set(RunState::Running);
    }

    /// Ends the vCPU threads and waits for them.
    pub fn stop(&mut self) {
        self.control.set(RunState::Finished);
        self.kick_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Outcome {
    Continue,
    Kicked,
    Stop(GuestEvent),
}

fn vcpu_thread(mut fd: VcpuFd, index: u32, control: &Control, ctx: &VcpuContext) {
    let run = fd.get_kvm_run();
    let p: *mut u8 = &mut run.immediate_exit;
    IMMEDIATE_EXIT.with(|c| c.set(p));
    loop {
        if control.wanted() != RunState::Running && !control.park() {
            break;
        }
        let outcome = match fd.run() {
            Ok(exit) => handle_exit(index, exit, ctx),
            Err(e) if e.errno() == libc::EINTR => Outcome::Kicked,
            Err(e) if e.errno() == libc::EAGAIN => Outcome::Continue,
            Err(e) => {
                ctx.metrics.vcpu.errors.inc();
                Outcome::Stop(GuestEvent::VcpuFailed {
                    index,
                    reason: format!("KVM_RUN: {e}"),
                })
            }
        };
        match outcome {
            Outcome::Continue => {}
            Outcome::Kicked => fd.set_kvm_immediate_exit(0),
            Outcome::Stop(event) => {
                ctx.events.send(event);
                control.park_until_finished();
                break;
            }
        }
    }
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
}

fn handle_exit(index: u32, exit: VcpuExit, ctx: &VcpuContext) -> Outcome {
    let m = &ctx.metrics.vcpu;
    m.exits.inc();
    match exit {
        VcpuExit::IoIn(port, data) => {
            m.io_exits.inc();
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0xff);
                m.unhandled_accesses.inc();
                tracing::trace!("vcpu{index}: in from unclaimed port {port:#x}");
            }
            Outcome::Continue
        }
        VcpuExit::IoOut(port, data) => {
            m.io_exits.inc();
            if !ctx.pio.write(u64::from(port), data) {
                m.unhandled_accesses.inc();
                tracing::trace!("vcpu{index}: out to unclaimed port {port:#x}");
            }
            Outcome::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            m.mmio_exits.inc();
            if !ctx.mmio.read(addr, data) {
                data.fill(0xff);
                m.unhandled_accesses.inc();
                tracing::debug!("vcpu{index}: read of unclaimed address {addr:#x}");
            }
            Outcome::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            m.mmio_exits.inc();
            if !ctx.mmio.write(addr, data) {
                m.unhandled_accesses.inc();
                tracing::debug!("vcpu{index}: write to unclaimed address {addr:#x}");
            }
            Outcome::Continue
        }
        VcpuExit::Intr => Outcome::Kicked,
        VcpuExit::Shutdown => {
            tracing::info!("vcpu{index}: triple fault (the guest reset the CPU)");
            Outcome::Stop(GuestEvent::Reset(ResetSource::TripleFault))
        }
        VcpuExit::SystemEvent(kind, _) if kind == KVM_SYSTEM_EVENT_SHUTDOWN => {
            Outcome::Stop(GuestEvent::PowerOff)
        }
        VcpuExit::SystemEvent(kind, _) if kind == KVM_SYSTEM_EVENT_RESET => {
            Outcome::Stop(GuestEvent::Reset(ResetSource::Kvm))
        }
        other => {
            m.errors.inc();
            Outcome::Stop(GuestEvent::VcpuFailed {
                index,
                reason: format!("unexpected exit {other:?}"),
            })
        }
    }
}
