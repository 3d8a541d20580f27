//! mica-vmm start-up figures on this machine's `/dev/kvm`, with the stub guests:
//!
//! - process start → first guest instruction: the time from `spawn()` until the
//!   stub's first byte arrives at a reader of the serial log (a FIFO, which the
//!   VMM writes through unbuffered). The stub's first port write is its third
//!   instruction, so this is first instruction + one port-I/O exit.
//! - process start → control socket answering: `spawn()` until `GET /vm`
//!   answers 200 (idle stub).
//! - memory overhead: the VMM's RSS minus the guest memory it touched, from
//!   /proc/PID/smaps, 2 vCPUs / 256 MiB, idle stub, after a control request.
//!
//! `cargo bench -p mica-vmm --bench startup` (MICA_BENCH_RUNS=N, default 30;
//! MICA_VMM_BIN=path measures another build, such as `--profile vmm`).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mica_tests::artifacts::{idle_guest, stub_guest};
use serde_json::json;

/// The VMM under test: `MICA_VMM_BIN` (e.g. target/vmm/mica-vmm, the deployment
/// build), or the binary cargo built for this bench.
fn vmm_bin() -> PathBuf {
    std::env::var_os("MICA_VMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mica-vmm")))
}

fn spawn(config: &serde_json::Value, dir: &Path, api: Option<&Path>) -> Child {
    let cfg = dir.join("vm.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--config").arg(&cfg).arg("--log-level").arg("warn");
    if let Some(api) = api {
        cmd.arg("--api-sock").arg(api);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

struct Stats {
    samples: Vec<f64>,
}

impl Stats {
    fn new(mut samples: Vec<f64>) -> Self {
        samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Self { samples }
    }
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.samples.len() - 1) as f64 * p).round() as usize;
        self.samples[i]
    }
    fn line(&self, unit: &str) -> String {
        format!(
            "n={} min={:.2}{unit} median={:.2}{unit} p90={:.2}{unit} max={:.2}{unit}",
            self.samples.len(),
            self.samples[0],
            self.pct(0.5),
            self.pct(0.9),
            self.samples[self.samples.len() - 1]
        )
    }
}

/// spawn → first console byte, and spawn → exit, in ms.
fn first_instruction(vcpus: u32, mib: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("serial.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let config = json!({
        "vcpus": vcpus, "memory_mib": mib, "kernel": stub_guest(),
        "serial": {"log": fifo},
    });
    let t0 = Instant::now();
    let mut child = spawn(&config, dir.path(), None);
    let mut pfd = libc::pollfd {
        fd: reader.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert!(n > 0, "no console output within 10 s");
        let mut b = [0u8; 64];
        match reader.read(&mut b) {
            Ok(k) if k > 0 => {
                assert_eq!(b[0], b'M');
                break;
            }
            _ => std::thread::sleep(Duration::from_micros(10)),
        }
    }
    let first = t0.elapsed();
    let status = child.wait().unwrap();
    let exit = t0.elapsed();
    assert!(status.success());
    (first.as_secs_f64() * 1e3, exit.as_secs_f64() * 1e3)
}

fn get_vm(sock: &Path) -> Option<u16> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.write_all(b"GET /vm HTTP/1.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split(' ').nth(1)?.parse().ok()
}

/// spawn → GET /vm answering 200, in ms.
fn socket_answering() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.sock");
    let config = json!({
        "vcpus": 2, "memory_mib": 256, "kernel": idle_guest(),
        "serial": {"log": dir.path().join("serial.log")},
    });
    let t0 = Instant::now();
    let mut child = spawn(&config, dir.path(), Some(&api));
    let took = loop {
        if get_vm(&api) == Some(200) {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no answer within 10 s"
        );
        std::thread::sleep(Duration::from_micros(50));
    };
    stop(&api, &mut child);
    took.as_secs_f64() * 1e3
}

fn stop(api: &Path, child: &mut Child) {
    let mut s = UnixStream::connect(api).unwrap();
    s.write_all(b"POST /vm/stop HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    assert!(child.wait().unwrap().success());
}

/// (total RSS, guest memory RSS) in KiB of a running VMM.
fn rss(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut guest) = (0, 0);
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_guest = line.contains("mica-guest-mem");
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap();
            total += kb;
            if in_guest {
                guest += kb;
            }
        }
    }
    (total, guest)
}

fn overhead() -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.sock");
    let log = dir.path().join("serial.log");
    let config = json!({
        "vcpus": 2, "memory_mib": 256, "kernel": idle_guest(),
        "serial": {"log": log},
    });
    let mut child = spawn(&config, dir.path(), Some(&api));
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("MICA-IDLE-READY")
        || get_vm(&api) != Some(200)
    {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let r = rss(child.id());
    stop(&api, &mut child);
    r
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        eprintln!("startup bench skipped: /dev/kvm: {e}");
        return;
    }
    let runs: usize = std::env::var("MICA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "mica-vmm start-up on this machine's /dev/kvm ({runs} runs each), binary {}",
        vmm_bin().display()
    );
    println!("load average at start: {}", load().trim());
    for (vcpus, mib) in [(1, 128), (2, 256)] {
        // One unmeasured run warms the page cache.
        first_instruction(vcpus, mib);
        let (first, exit): (Vec<f64>, Vec<f64>) =
            (0..runs).map(|_| first_instruction(vcpus, mib)).unzip();
        println!(
            "start -> first guest instruction, {vcpus} vCPU {mib} MiB: {}",
            Stats::new(first).line(" ms")
        );
        println!(
            "start -> exit after power-off,    {vcpus} vCPU {mib} MiB: {}",
            Stats::new(exit).line(" ms")
        );
    }
    socket_answering();
    let sock: Vec<f64> = (0..runs).map(|_| socket_answering()).collect();
    println!(
        "start -> control socket answering, 2 vCPU 256 MiB: {}",
        Stats::new(sock).line(" ms")
    );
    let samples: Vec<(u64, u64)> = (0..5).map(|_| overhead()).collect();
    let over = Stats::new(
        samples
            .iter()
            .map(|(t, g)| (t - g) as f64 / 1024.0)
            .collect(),
    );
    let (t, g) = samples[samples.len() / 2];
    println!(
        "memory overhead (RSS - guest RSS), 2 vCPU 256 MiB idle: {} (e.g. RSS {t} KiB, guest {g} KiB)",
        over.line(" MiB")
    );
    println!("load average at end: {}", load().trim());
}
