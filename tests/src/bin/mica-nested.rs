//! Runs a command on the nested test host (see `mica_tests::nested`).
//!
//! ```text
//! mica-nested run [--memory MIB] [--cpus N] -- COMMAND [ARG...]
//! ```
//! Boots L1, runs the command there with bash (this machine's files are at the
//! same paths inside L1), prints its output, powers L1 off and exits with the
//! command's exit code. The command runs in the caller's working folder.
//! Interrupted (SIGINT, SIGTERM, SIGHUP), it powers L1 off the same way
//! before exiting: L1's QEMU runs in a session of its own and would
//! otherwise outlive it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use mica_tests::nested::{NestedHost, NestedOptions};

fn usage() -> ! {
    eprintln!("usage: mica-nested run [--memory MIB] [--cpus N] -- COMMAND [ARG...]");
    std::process::exit(2);
}

/// Set by the signal handler (all it does: async-signal-safe).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// On SIGINT, SIGTERM or SIGHUP, kills L1's QEMU (`qemu`, once known): the
/// run below then fails and the host is dropped as on any failure.
fn watch_signals(qemu: &'static AtomicU32) {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only stores to an atomic; a
        // zeroed sigaction with that handler is a valid argument.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    std::thread::spawn(move || {
        while !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("mica-nested: interrupted; powering L1 off");
        loop {
            let pid = qemu.load(Ordering::SeqCst);
            if pid != 0 {
                // SAFETY: a plain kill(2) of the QEMU this process started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

fn main() {
    static QEMU: AtomicU32 = AtomicU32::new(0);
    watch_signals(&QEMU);
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("run") {
        usage();
    }
    let mut opts = NestedOptions::new("cli");
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--memory" => {
                opts.memory_mib = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--cpus" => {
                opts.cpus = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--" => {
                command.extend(args.by_ref());
                break;
            }
            _ => usage(),
        }
    }
    if command.is_empty() {
        usage();
    }
    let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
    let cwd = std::env::current_dir().expect("current directory");
    let script = format!(
        "cd {} && {}",
        quote(&cwd.to_string_lossy()),
        command
            .iter()
            .map(|a| quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );

    eprintln!("mica-nested: booting the nested test host (QEMU, software CPU, nested KVM)...");
    let host = match NestedHost::boot(opts) {
        Ok(host) => host,
        Err(e) => {
            eprintln!("mica-nested: {e:#}");
            std::process::exit(1);
        }
    };
    QEMU.store(host.qemu_pid(), Ordering::SeqCst);
    if INTERRUPTED.load(Ordering::SeqCst) {
        drop(host);
        std::process::exit(130);
    }
    eprintln!(
        "mica-nested: ready in {:.1} s ({}); running: {}",
        host.boot_time().as_secs_f64(),
        host.ready_line(),
        command.join(" ")
    );
    let result = host.run_timeout(&script, Duration::from_secs(3600));
    // Powers L1 off (kills QEMU if it must): process::exit below runs no
    // destructor, and a failed run used to leave its QEMU running.
    drop(host);
    match result {
        Ok(out) => {
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            std::process::exit(out.code);
        }
        Err(e) => {
            eprintln!("mica-nested: {e:#}");
            std::process::exit(1);
        }
    }
}
