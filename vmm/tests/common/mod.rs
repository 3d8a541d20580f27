//! Helpers for mica-vmm's end-to-end tests: run the VMM on this machine's
//! `/dev/kvm` (stub guests), talk to its control socket, and run it inside the
//! nested test host (Linux guests).
#![allow(dead_code)]

pub mod nested;
pub mod rfb;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `mica-vmm` binary cargo built for these tests.
pub fn vmm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mica-vmm"))
}

/// Whether this machine's `/dev/kvm` can be opened.
pub fn kvm_available() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// One HTTP request over a Unix socket; returns the status and the body.
pub fn http(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: vmm\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A mica-vmm process on this machine.
pub struct Vmm {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub api: PathBuf,
    pub serial_log: PathBuf,
    stderr: PathBuf,
    exit: Option<i32>,
}

impl Vmm {
    /// Starts the VMM with `config`; its serial log (unless the config sets one)
    /// and control socket go to a fresh folder.
    pub fn start(mut config: Value) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mica-vmm-test-")
            .tempdir()
            .unwrap();
        let serial_log = dir.path().join("serial.log");
        if config.get("serial").is_none() {
            config["serial"] = serde_json::json!({ "log": serial_log });
        }
        let cfg = dir.path().join("vm.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let api = dir.path().join("api.sock");
        let stderr = dir.path().join("vmm.err");
        let child = Command::new(vmm_bin())
            .arg("--config")
            .arg(&cfg)
            .arg("--api-sock")
            .arg(&api)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut vmm = Self {
            child,
            dir,
            api,
            serial_log,
            stderr,
            exit: None,
        };
        // Until the control socket is there, or the VMM has already finished
        // (a stub guest that powers off at once).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vmm.api.exists() {
            if let Some(status) = vmm.child.try_wait().unwrap() {
                vmm.exit = Some(status.code().unwrap_or(-1));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no control socket after 10 s\n{}",
                vmm.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        vmm
    }

    pub fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial_log).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until `cond` holds; panics with the VMM's output otherwise.
    pub fn wait_until(&self, timeout: Duration, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- serial ---\n{}\n--- stderr ---\n{}",
                self.serial(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_serial(&self, needle: &str, timeout: Duration) {
        self.wait_until(timeout, &format!("{needle:?} on the console"), |v| {
            v.serial().contains(needle)
        });
    }

    /// A control-socket request; the body parsed as JSON.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = http(&self.api, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.stderr()));
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"));
        (status, json)
    }

    /// Waits for the process to end; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        if let Some(code) = self.exit {
            return code;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let code = status.code().unwrap_or(-1);
                self.exit = Some(code);
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "the VMM did not exit within {timeout:?}\n--- serial ---\n{}\n--- stderr ---\n{}",
                self.serial(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal to the VMM.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child process, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The numbers N of the `tick N` lines the counter stub guest printed.
pub fn ticks(serial: &str) -> Vec<u64> {
    serial
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}
