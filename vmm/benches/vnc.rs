//! The VNC server's costs on this machine's `/dev/kvm`, with the framebuffer
//! stub guest (tests/stub/fb.S) on a 1024×768 display and one viewer (the
//! tests' RFB client, ZRLE, always keeping an incremental request pending, as
//! noVNC does):
//!
//! - idle console: the stub halts after drawing; bytes sent and CPU time used
//!   per second by the VMM process (/proc/PID/stat utime+stime), and by its
//!   `vnc` thread alone;
//! - scrolling console: the stub moves the whole screen up 16 lines and draws
//!   16 new ones about every 20M TSC cycles; the same figures, plus updates
//!   per second. The stub's vCPU busy-waits between scrolls (a stub has no
//!   timer interrupt), so the VMM's total includes a spinning vCPU: the
//!   non-vCPU threads' figure is the display's cost;
//! - latency from a guest write to the viewer: the stub writes pixel (0, 0)
//!   and then one byte to COM1; this bench timestamps the byte's arrival on
//!   the serial console socket and the update carrying the new pixel on the
//!   VNC socket (stub guest on this machine's KVM, not a Linux guest).
//!
//! `cargo bench -p mica-vmm --bench vnc` (MICA_BENCH_SECS=N per phase, default 10).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Vmm;
use common::rfb::{self, Client};
use mica_tests::artifacts::fb_guest;
use serde_json::{Value, json};

const WIDTH: usize = 1024;
const HEIGHT: usize = 768;

fn secs() -> u64 {
    std::env::var("MICA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// CPU seconds used so far: (whole process, non-vCPU threads, the vnc thread).
fn cpu(pid: u32) -> (f64, f64, f64) {
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = |stat: &str| -> Option<(String, f64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after ')'.
        let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some((comm, t / hz))
    };
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0.0, |(_, t)| t);
    let (mut devices, mut vnc) = (0.0, 0.0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Some((comm, t)) = std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|s| ticks(&s))
        {
            if !comm.starts_with("vcpu") {
                devices += t;
            }
            if comm == "vnc" {
                vnc = t;
            }
        }
    }
    (total, devices, vnc)
}

fn display(vmm: &Vmm) -> Value {
    vmm.api("GET", "/metrics", None).1["display"].clone()
}

fn start(mode: &str, dir: &std::path::Path) -> Vmm {
    let vmm = Vmm::start(json!({
        "vcpus": 1, "memory_mib": 64, "kernel": fb_guest(), "cmdline": mode,
        "serial": {"log": dir.join("serial.log"), "socket": dir.join("console.sock")},
        "display": {"width": WIDTH, "height": HEIGHT, "vnc_socket": dir.join("vm.vnc")},
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(dir.join("serial.log"))
        .unwrap_or_default()
        .contains("MICA-FB-READY")
    {
        assert!(
            Instant::now() < deadline,
            "the stub did not draw\n{}",
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    vmm
}

/// A viewer that keeps an incremental request pending; calls `seen` with
/// each update's arrival time and pixel (0, 0).
fn viewer(
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    seen: impl Fn(Instant, u32) + Send + 'static,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut c = Client::unix(&path, "RFB 003.008\n").unwrap();
        c.set_encodings(&[rfb::ZRLE]);
        c.request(false);
        c.read_update().unwrap();
        seen(Instant::now(), c.screen[0]);
        let mut updates = 0;
        while !stop.load(Ordering::SeqCst) {
            c.request(true);
            if c.read_update().is_err() {
                break;
            }
            updates += 1;
            seen(Instant::now(), c.screen[0]);
        }
        updates
    })
}

/// Bytes and CPU per second with one viewer on the stub in `mode`.
fn cost(name: &str, mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let vmm = start(mode, dir.path());
    let pid = vmm.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let v = viewer(dir.path().join("vm.vnc"), stop.clone(), |_, _| {});
    std::thread::sleep(Duration::from_secs(1));
    let (m0, c0, t0) = (display(&vmm), cpu(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(secs()));
    let (m1, c1, dt) = (display(&vmm), cpu(pid), t0.elapsed().as_secs_f64());
    let delta = |k: &str| (m1[k].as_u64().unwrap() - m0[k].as_u64().unwrap()) as f64 / dt;
    println!(
        "{name}: {:.0} bytes/s, {:.1} updates/s; VMM CPU {:.1} ms/s (non-vCPU threads {:.1} ms/s, vnc thread {:.1} ms/s)",
        delta("vnc_bytes_sent"),
        delta("vnc_updates_sent"),
        (c1.0 - c0.0) / dt * 1000.0,
        (c1.1 - c0.1) / dt * 1000.0,
        (c1.2 - c0.2) / dt * 1000.0,
    );
    stop.store(true, Ordering::SeqCst);
    drop(vmm);
    let _ = v.join();
}

/// Guest write → viewer, over the tick stub's pixel counter.
fn latency() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = start("t", dir.path());
    let serial_times: Arc<Mutex<Vec<(Instant, u8)>>> = Arc::default();
    let mut console = UnixStream::connect(dir.path().join("console.sock")).unwrap();
    let st = serial_times.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok(n) = console.read(&mut b) {
            if n == 0 {
                return;
            }
            let now = Instant::now();
            let mut t = st.lock().unwrap();
            t.extend(
                b[..n]
                    .iter()
                    .filter(|c| c.is_ascii_uppercase())
                    .map(|&c| (now, c)),
            );
        }
    });
    let vnc_times: Arc<Mutex<Vec<(Instant, u32)>>> = Arc::default();
    let vt = vnc_times.clone();
    let last = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let v = viewer(dir.path().join("vm.vnc"), stop.clone(), move |t, px| {
        // The first call is the full update: it only sets the start value.
        let prev = last.swap(u64::from(px), Ordering::SeqCst);
        if prev != 0 && u64::from(px) != prev {
            vt.lock().unwrap().push((t, px));
        }
    });
    std::thread::sleep(Duration::from_secs(secs()));
    stop.store(true, Ordering::SeqCst);
    let serial = serial_times.lock().unwrap().clone();
    let vnc = vnc_times.lock().unwrap().clone();
    let mut lat: Vec<f64> = Vec::new();
    let mut early = 0;
    for &(tv, px) in &vnc {
        // The tick n wrote 'A' + n % 26 right after pixel (0, 0) = n: the
        // nearest such byte in time (ticks of the same letter are 26 apart).
        // The update can beat the byte to this process (the serial reader
        // thread is scheduled later): that counts as 0.
        let want = b'A' + (px % 26) as u8;
        let nearest = serial
            .iter()
            .filter(|&&(_, c)| c == want)
            .map(|&(ts, _)| ts)
            .min_by_key(|&ts| if ts <= tv { tv - ts } else { ts - tv });
        if let Some(ts) = nearest {
            if ts > tv {
                early += 1;
            }
            lat.push(tv.saturating_duration_since(ts).as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    drop(vmm);
    let _ = v.join();
    if lat.is_empty() {
        println!("latency: no samples");
        return;
    }
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "latency guest write -> viewer (stub guest, this machine's KVM): {} samples, median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({early} updates arrived before the serial byte: 0)",
        lat.len(),
        pct(0.5),
        pct(0.9),
        lat[lat.len() - 1]
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !mica_tests::require("/dev/kvm", common::kvm_available()) {
        return;
    }
    println!("1024x768, one ZRLE viewer, {} s per phase", secs());
    // No viewer: the VNC server must cost nothing.
    {
        let dir = tempfile::tempdir().unwrap();
        let vmm = start("i", dir.path());
        let pid = vmm.child.id();
        std::thread::sleep(Duration::from_secs(1));
        let (c0, t0) = (cpu(pid), Instant::now());
        std::thread::sleep(Duration::from_secs(secs()));
        let (c1, dt) = (cpu(pid), t0.elapsed().as_secs_f64());
        println!(
            "idle console, no viewer: VMM CPU {:.2} ms/s (vnc thread {:.2} ms/s)",
            (c1.0 - c0.0) / dt * 1000.0,
            (c1.2 - c0.2) / dt * 1000.0
        );
    }
    cost("idle console, one viewer", "i");
    cost("scrolling console, one viewer", "s");
    latency();
}
