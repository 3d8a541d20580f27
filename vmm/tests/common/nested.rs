//! Running mica-vmm inside the nested test host (L1), where real Linux guests
//! (L2) run. Each VM gets a folder in the session's shared folder, so its serial
//! log and the VMM's stderr are readable from here while it runs; the control
//! socket lives in L1 and is reached with curl there.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mica_tests::artifacts::{GuestImages, GuestKernel};
use mica_tests::nested::{Job, NestedHost, NestedOptions};
use serde_json::Value;

use super::vmm_bin;

/// The loopback address a VMM's VNC server listens on in VNC tests (L1).
pub const VNC_TCP: &str = "127.0.0.1:5901";
/// L1's port that this machine's forwarded port reaches.
pub const VNC_RELAY_PORT: u16 = 5900;

/// Quotes a string for bash.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Base64 for `mica.run=`.
pub fn base64(data: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = data.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Everything a nested VMM test needs: L1, the guest kernel and images.
pub struct Nested {
    pub host: NestedHost,
    pub kernel: GuestKernel,
    pub images: GuestImages,
}

impl Nested {
    /// Boots L1, or says why the test is skipped (see `mica_tests::require`).
    pub fn boot(name: &str) -> Option<Self> {
        Self::boot_with(NestedOptions::new(name))
    }

    /// Like [`Nested::boot`], with options (port forwards into L1).
    pub fn boot_with(options: NestedOptions) -> Option<Self> {
        let available = NestedHost::available()
            .and_then(|_| GuestKernel::locate().map(|_| ()).map_err(|e| e.to_string()))
            .and_then(|_| GuestImages::locate().map(|_| ()).map_err(|e| e.to_string()));
        if !mica_tests::require(
            "the nested test host with the guest kernel and images",
            available,
        ) {
            return None;
        }
        let host = NestedHost::boot(options).expect("the nested host boots");
        assert!(
            host.ready_line().contains("kvm=yes"),
            "L1 has no /dev/kvm: {}",
            host.ready_line()
        );
        eprintln!("nested host ready in {:?}", host.boot_time());
        Some(Self {
            host,
            kernel: GuestKernel::locate().unwrap(),
            images: GuestImages::locate().unwrap(),
        })
    }

    /// Boots L1 for a VNC viewer on this machine: `(L1, local port)`, the
    /// port forwarded to L1's [`VNC_RELAY_PORT`]; [`Nested::vnc_relay`]
    /// carries it on to a VMM's `display.vnc_tcp` = [`VNC_TCP`].
    pub fn boot_for_vnc(name: &str) -> Option<(Self, u16)> {
        let port = mica_tests::free_port();
        let mut options = NestedOptions::new(name);
        options.forwards = vec![(port, VNC_RELAY_PORT)];
        Self::boot_with(options).map(|n| (n, port))
    }

    /// L1: 0.0.0.0:[`VNC_RELAY_PORT`] (the forward's end) to [`VNC_TCP`],
    /// until the job is dropped.
    pub fn vnc_relay(&self) -> Job<'_> {
        self.host
            .spawn(&format!(
                "exec socat TCP-LISTEN:{VNC_RELAY_PORT},fork,reuseaddr TCP:{VNC_TCP}"
            ))
            .unwrap()
    }

    /// Runs a script in L1 and returns its stdout; panics if it fails.
    pub fn sh(&self, script: &str) -> String {
        self.host
            .run_timeout(script, Duration::from_secs(300))
            .unwrap()
            .expect_success(script)
            .stdout
    }

    /// Starts a VM in L1. Its serial log goes to its folder unless `config`
    /// names another.
    pub fn start_vm(&self, name: &str, config: Value) -> NestedVm<'_> {
        self.start_vm_with(name, config, "")
    }

    /// Starts a VM with `prefix` before the VMM's command (`ip netns exec X`).
    pub fn start_vm_with(&self, name: &str, mut config: Value, prefix: &str) -> NestedVm<'_> {
        let dir = self.host.shared_dir().join("vms").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let l1_dir = format!("/mica-job/vms/{name}");
        if config.get("serial").is_none() {
            config["serial"] = serde_json::json!({ "log": format!("{l1_dir}/serial.log") });
        }
        std::fs::write(
            dir.join("vm.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        let sock = format!("/run/mica-{name}.sock");
        let script = format!(
            "echo $$ > {l1_dir}/pid; exec {prefix} {} --config {l1_dir}/vm.json --api-sock {sock} 2>{l1_dir}/vmm.err",
            vmm_bin().display()
        );
        let job = self.host.spawn(&script).unwrap();
        NestedVm {
            nested: self,
            job,
            dir,
            sock,
            started: Instant::now(),
        }
    }
}

/// A VMM running in L1.
pub struct NestedVm<'a> {
    nested: &'a Nested,
    job: Job<'a>,
    pub dir: PathBuf,
    pub sock: String,
    pub started: Instant,
}

impl NestedVm<'_> {
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("serial.log")).unwrap_or_default())
            .into_owned()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("vmm.err")).unwrap_or_default()
    }

    fn report(&self) -> String {
        format!(
            "--- serial ---\n{}\n--- vmm stderr ---\n{}",
            self.serial(),
            self.stderr()
        )
    }

    /// Whether L1 still runs jobs.
    fn l1_alive(&self) -> bool {
        self.nested
            .host
            .run_timeout("true", Duration::from_secs(60))
            .is_ok()
    }

    fn l1_state(&self) -> &'static str {
        if self.l1_alive() {
            "the nested host (L1) still runs jobs"
        } else {
            "the nested host (L1) stopped running jobs: L1 stalled (see wait_exit)"
        }
    }

    /// Waits until the console shows `needle`.
    pub fn wait_serial(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.serial().contains(needle) {
            if self.job.is_done() {
                panic!(
                    "the VMM ended before {needle:?} appeared\n{}",
                    self.report()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{needle:?} did not appear within {timeout:?}; {}\n{}",
                    self.l1_state(),
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the VMM to exit; returns its exit code. On a timeout it says
    /// whether L1 itself stalled: on a loaded machine, or under heavy guest
    /// I/O, the nested host (QEMU's software CPU emulating SVM) can stop with
    /// all its vCPUs idle, and then nothing in it ever finishes.
    pub fn wait_exit(&self, timeout: Duration) -> i32 {
        match self.job.wait(timeout) {
            Ok(out) => out.code,
            Err(e) => panic!("{e}\n{}\n{}", self.l1_state(), self.report()),
        }
    }

    /// Waits for the VMM to exit like [`NestedVm::wait_exit`], checking every
    /// 20 s that L1 still runs jobs: under sustained heavy guest I/O the nested
    /// host (QEMU's software CPU emulating SVM) can stall with all its vCPUs
    /// idle, and then nothing would ever finish.
    pub fn wait_exit_watching_l1(&self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            match self.job.wait(Duration::from_secs(20)) {
                Ok(out) => return out.code,
                Err(_) if Instant::now() < deadline => {
                    if self
                        .nested
                        .host
                        .run_timeout("true", Duration::from_secs(60))
                        .is_err()
                    {
                        panic!(
                            "the nested host (L1) stopped running jobs: it stalled\n{}",
                            self.report()
                        );
                    }
                }
                Err(e) => panic!("{e}\n{}", self.report()),
            }
        }
    }

    /// A control-socket request from inside L1.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let data = body
            .map(|b| format!("-d {}", sh_quote(b)))
            .unwrap_or_default();
        let out = self.nested.sh(&format!(
            "curl -sS --max-time 60 -w '\\n%{{http_code}}' --unix-socket {} -X {method} http://vmm{path} {data}",
            self.sock
        ));
        let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        let status: u16 = status.parse().unwrap_or(0);
        let json = serde_json::from_str(body).unwrap_or(Value::Null);
        (status, json)
    }

    /// SIGKILLs the VMM.
    pub fn kill9(&self) {
        self.nested
            .sh(&format!("kill -9 $(cat /mica-job/vms/{}/pid)", self.name()));
        self.wait_exit(Duration::from_secs(30));
    }

    fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }
}

/// The kernel command line for the tiny guest: quiet, no XSAVE (L2 has none),
/// and a command to run once userspace is up.
pub fn tiny_cmdline(extra: &str, run: Option<&str>) -> String {
    let mut c = format!("console=ttyS0 noxsave quiet panic=-1 {extra}");
    if let Some(cmd) = run {
        c.push_str(&format!(" mica.run={}", base64(cmd)));
    }
    c.trim().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::base64("poweroff"), "cG93ZXJvZmY=");
        assert_eq!(super::base64("ab"), "YWI=");
        assert_eq!(super::base64("abc"), "YWJj");
    }
}
