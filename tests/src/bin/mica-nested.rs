//! Runs a command on the nested test host (see `mica_tests::nested`).
//!
//! ```text
//! mica-nested run [--memory MIB] [--cpus N] -- COMMAND [ARG...]
//! ```
//! Boots L1, runs the command there with bash (this machine's files are at the
//! same paths inside L1), prints its output, powers L1 off and exits with the
//! command's exit code. The command runs in the caller's working folder.

use std::time::Duration;

use mica_tests::nested::{NestedHost, NestedOptions};

fn usage() -> ! {
    eprintln!("usage: mica-nested run [--memory MIB] [--cpus N] -- COMMAND [ARG...]");
    std::process::exit(2);
}

fn main() {
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
