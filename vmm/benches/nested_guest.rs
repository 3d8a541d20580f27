//! Linux-guest figures inside the nested test host (QEMU TCG + nested KVM:
//! absolute numbers are far below hardware; compare them run to run):
//!
//! - process start → guest userspace (the boot timer), p50/p95 over
//!   MICA_BENCH_BOOTS boots (default 12), project kernel + tiny initramfs,
//!   1 vCPU 128 MiB and 2 vCPU 256 MiB;
//! - virtio-blk sequential write/read (1 MiB, O_DIRECT) and 4 KiB random read in
//!   the guest, against the same image file read on the host (L1);
//! - virtio-net throughput guest→host and host→guest with iperf3, the host end
//!   on a tap in a network namespace.
//!
//! Tools the tiny guest lacks (a static `blkbench`, built from blkbench.c, and
//! iperf3 with its libraries, copied from this machine) ride on an extra ext4
//! disk mounted at /opt.
//!
//! `cargo bench -p mica-vmm --bench nested_guest`

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::nested::{Nested, tiny_cmdline};
use serde_json::json;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fills `dir` with blkbench (static) and iperf3 with its libraries.
fn make_tools(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/blkbench.c");
    run(Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(dir.join("bin/blkbench"))
        .arg(&src));
    let iperf = "/usr/bin/iperf3";
    std::fs::copy(iperf, dir.join("bin/iperf3.real")).unwrap();
    let mut loader = None;
    for line in run(Command::new("ldd").arg(iperf)).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let name = Path::new(path).file_name().unwrap();
        std::fs::copy(path, dir.join("lib").join(name)).unwrap();
        if path.contains("ld-linux") {
            loader = Some(name.to_string_lossy().into_owned());
        }
    }
    let loader = loader.expect("iperf3 has a dynamic loader");
    std::fs::write(
        dir.join("bin/iperf3"),
        format!("#!/bin/sh\nexec /opt/lib/{loader} --library-path /opt/lib /opt/bin/iperf3.real \"$@\"\n"),
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(dir.join("bin/iperf3")));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let boots: usize = std::env::var("MICA_BENCH_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let Some(n) = Nested::boot("vmm-bench") else {
        return;
    };
    let vmm = common::vmm_bin();
    let kernel = n.kernel.vmlinux();
    let initrd = n.images.tiny_initramfs();
    println!("nested host: {}", n.host.ready_line());

    // --- boot time ---
    for (vcpus, mib) in [(1, 128), (2, 256)] {
        let cfg = json!({
            "vcpus": vcpus, "memory_mib": mib, "kernel": kernel, "initrd": initrd,
            "cmdline": tiny_cmdline("", Some("poweroff")),
            "serial": {"log": "/tmp/boot-serial.log"},
        });
        let path = n.host.shared_dir().join(format!("boot-{vcpus}.json"));
        std::fs::write(&path, cfg.to_string()).unwrap();
        let out = n.sh(&format!(
            "for i in $(seq {boots}); do \
               {} --config /mica-job/boot-{vcpus}.json 2>/tmp/boot.err || {{ cat /tmp/boot.err; exit 1; }}; \
               grep -o 'userspace reached [0-9.]* ms' /tmp/boot.err; \
             done",
            vmm.display()
        ));
        let mut ms: Vec<f64> = out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
            .collect();
        assert_eq!(ms.len(), boots, "{out}");
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "start -> guest userspace, {vcpus} vCPU {mib} MiB, {boots} boots: p50={:.0} ms p95={:.0} ms min={:.0} ms max={:.0} ms",
            percentile(&ms, 0.5),
            percentile(&ms, 0.95),
            ms[0],
            ms[ms.len() - 1]
        );
    }

    // --- tools disk ---
    let tools = n.host.shared_dir().join("tools");
    make_tools(&tools);
    n.sh("mke2fs -q -t ext4 -d /mica-job/tools /tmp/tools.ext4 64M");

    // --- virtio-blk ---
    let size_mib = 256;
    n.sh(&format!(
        "head -c {size_mib}M /dev/urandom > /tmp/bench.img"
    ));
    let script = format!(
        "mkdir -p /opt; mount -o ro /dev/vda /opt; \
         /opt/bin/blkbench seqwrite /dev/vdb {size_mib} direct; \
         /opt/bin/blkbench seqread /dev/vdb {size_mib} direct; \
         /opt/bin/blkbench randread /dev/vdb {size_mib} direct; \
         poweroff"
    );
    let vm = n.start_vm(
        "blk",
        json!({
            "vcpus": 2, "memory_mib": 256, "kernel": kernel, "initrd": initrd,
            "disks": [
                {"id": "tools", "path": "/tmp/tools.ext4", "read_only": true},
                {"id": "bench", "path": "/tmp/bench.img"},
            ],
            "cmdline": tiny_cmdline("", Some(&script)),
        }),
    );
    assert_eq!(
        vm.wait_exit_watching_l1(Duration::from_secs(1200)),
        0,
        "{}",
        vm.stderr()
    );
    let serial = vm.serial();
    let lines: Vec<&str> = serial.lines().filter(|l| l.contains("bytes=")).collect();
    assert_eq!(
        lines.len(),
        3,
        "blkbench did not report in the guest:\n{serial}"
    );
    for line in lines {
        let at = line.find("seq").or_else(|| line.find("rand")).unwrap_or(0);
        println!("virtio-blk in the guest (O_DIRECT): {}", line[at..].trim());
    }
    let blk = format!("{}/bin/blkbench", "/mica-job/tools");
    let host = n.sh(&format!(
        "{blk} seqwrite /tmp/bench.img {size_mib}; {blk} seqread /tmp/bench.img {size_mib}; \
         {blk} randread /tmp/bench.img {size_mib}"
    ));
    for line in host.lines() {
        println!("same image file on the host (L1, tmpfs): {}", line.trim());
    }

    // --- virtio-net ---
    n.sh(
        "ip netns add mica-bench && ip -n mica-bench link set lo up && \
         ip -n mica-bench tuntap add dev tap0 mode tap && \
         ip -n mica-bench addr add 10.0.0.1/24 dev tap0 && ip -n mica-bench link set tap0 up",
    );
    let server = n
        .host
        .spawn("exec ip netns exec mica-bench iperf3 -s -1 -p 5201 >/dev/null 2>&1")
        .unwrap();
    let server2 = n
        .host
        .spawn("exec ip netns exec mica-bench iperf3 -s -1 -p 5202 >/dev/null 2>&1")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let script = "mkdir -p /opt; mount -o ro /dev/vda /opt; \
                  /opt/bin/iperf3 -c 10.0.0.1 -p 5201 -t 10 -f m | grep -E 'sender|receiver' | sed 's/^/g2h /'; \
                  /opt/bin/iperf3 -c 10.0.0.1 -p 5202 -t 10 -f m -R | grep -E 'sender|receiver' | sed 's/^/h2g /'; \
                  poweroff";
    let vm = n.start_vm_with(
        "net",
        json!({
            "vcpus": 2, "memory_mib": 256, "kernel": kernel, "initrd": initrd,
            "disks": [{"id": "tools", "path": "/tmp/tools.ext4", "read_only": true}],
            "nics": [{"id": "eth0", "tap": "tap0", "mac": "52:54:00:12:34:56"}],
            "cmdline": tiny_cmdline("mica.ip=10.0.0.2/24", Some(script)),
        }),
        "ip netns exec mica-bench",
    );
    assert_eq!(
        vm.wait_exit_watching_l1(Duration::from_secs(600)),
        0,
        "{}",
        vm.stderr()
    );
    let serial = vm.serial();
    let lines: Vec<&str> = serial.lines().filter(|l| l.contains("bits/sec")).collect();
    assert_eq!(
        lines.len(),
        4,
        "iperf3 did not report in the guest:\n{serial}"
    );
    for line in lines {
        let at = line.find("g2h").or_else(|| line.find("h2g")).unwrap_or(0);
        let line = &line[at..];
        let dir = if line.starts_with("g2h") {
            "guest -> host"
        } else {
            "host -> guest"
        };
        println!("virtio-net {dir} (iperf3, 10 s): {}", line[4..].trim());
    }
    let _ = server.wait(Duration::from_secs(5));
    let _ = server2.wait(Duration::from_secs(5));
    let loopback = n.sh(
        "iperf3 -s -1 -p 5300 >/dev/null 2>&1 & sleep 1; iperf3 -c 127.0.0.1 -p 5300 -t 5 -f m | grep -E 'receiver'",
    );
    println!("for scale, L1 loopback (iperf3, 5 s): {}", loopback.trim());
}
