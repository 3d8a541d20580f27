//! The VNC server's costs with a real Linux guest in the nested test host
//! (QEMU TCG + nested KVM: absolute CPU figures are far above hardware's;
//! compare them run to run): the project kernel and the tiny initramfs on a
//! 1024×768 display, one viewer on this machine (the tests' RFB client, ZRLE,
//! always an incremental request pending) reaching the VMM's loopback TCP port
//! in L1 through a port forward and a socat relay.
//!
//! - idle console: tty1's shell waits at its prompt (the framebuffer
//!   console's cursor blinks); bytes sent, updates and the VMM's CPU time per
//!   second (/proc/PID/stat utime+stime in L1, and its `vnc` thread alone);
//! - scrolling console: a shell loop prints numbered lines to tty1 as fast as
//!   it can; the same figures.
//!
//! `cargo bench -p mica-vmm --bench nested_vnc` (MICA_BENCH_SECS=N per phase,
//! default 10)

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::nested::{Nested, VNC_TCP, tiny_cmdline};
use common::rfb::{self, Client};
use serde_json::{Value, json};

fn secs() -> u64 {
    std::env::var("MICA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// CPU seconds of the VMM in L1: (process, vnc thread).
fn cpu(n: &Nested, pid: &str) -> (f64, f64) {
    let out = n.sh(&format!(
        "getconf CLK_TCK; cat /proc/{pid}/stat; for t in /proc/{pid}/task/*; do cat $t/stat; done"
    ));
    let mut lines = out.lines();
    let hz: f64 = lines.next().unwrap().trim().parse().unwrap();
    let parse = |l: &str| -> (String, f64) {
        let (head, rest) = l.rsplit_once(')').unwrap();
        let comm = head.split_once('(').unwrap().1.to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        (comm, t / hz)
    };
    let total = parse(lines.next().unwrap()).1;
    let vnc = lines
        .map(parse)
        .find(|(c, _)| c == "vnc")
        .map_or(0.0, |(_, t)| t);
    (total, vnc)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some((n, port)) = Nested::boot_for_vnc("vmm-vnc-bench") else {
        return;
    };
    let _relay = n.vnc_relay();
    let console = "/run/mica-vnc-bench-console.sock";
    let vm = n.start_vm(
        "vncbench",
        json!({
            "vcpus": 1, "memory_mib": 256,
            "kernel": n.kernel.vmlinux(), "initrd": n.images.tiny_initramfs(),
            "cmdline": tiny_cmdline("", Some("true")),
            "serial": {"log": "/mica-job/vms/vncbench/serial.log", "socket": console},
            "display": {"vnc_tcp": VNC_TCP},
        }),
    );
    vm.wait_serial("=== mica.run exit=0 ===", Duration::from_secs(300));
    let pid = std::fs::read_to_string(vm.dir.join("pid"))
        .unwrap()
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_secs(5));

    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let viewer = std::thread::spawn(move || {
        let mut c = Client::tcp(
            format!("127.0.0.1:{port}").parse().unwrap(),
            "RFB 003.008\n",
        )
        .unwrap();
        c.set_encodings(&[rfb::ZRLE]);
        c.request(false);
        c.read_update().unwrap();
        while !s.load(Ordering::SeqCst) {
            c.request(true);
            if c.read_update().is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let display = |v: &Value| v["display"].clone();
    let measure = |name: &str| {
        let (m0, c0, t0) = (
            display(&vm.api("GET", "/metrics", None).1),
            cpu(&n, &pid),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(secs()));
        let (m1, c1) = (display(&vm.api("GET", "/metrics", None).1), cpu(&n, &pid));
        let dt = t0.elapsed().as_secs_f64();
        let d = |k: &str| (m1[k].as_u64().unwrap() - m0[k].as_u64().unwrap()) as f64 / dt;
        println!(
            "{name}: {:.0} bytes/s, {:.1} updates/s; VMM CPU {:.0} ms/s (vnc thread {:.0} ms/s)",
            d("vnc_bytes_sent"),
            d("vnc_updates_sent"),
            (c1.0 - c0.0) / dt * 1000.0,
            (c1.1 - c0.1) / dt * 1000.0,
        );
    };
    measure("Linux guest, idle tty1, one viewer");
    n.sh(&format!(
        "printf 'i=0; while true; do echo scrolling line $i; i=$((i+1)); done >/dev/tty1 &\\n' \
         | socat -t 2 - UNIX-CONNECT:{console}"
    ));
    std::thread::sleep(Duration::from_secs(2));
    let alive = n.sh(&format!("kill -0 {pid} && echo alive || echo gone"));
    assert!(
        alive.contains("alive"),
        "the VMM ended\n{}\n{}",
        vm.stderr(),
        vm.serial()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    measure("Linux guest, tty1 scrolling, one viewer");
    stop.store(true, Ordering::SeqCst);
    vm.api("POST", "/vm/stop", None);
    vm.wait_exit(Duration::from_secs(60));
    let _ = viewer.join();
}
