//! Real Linux guests in the nested test host: the project kernel boots with the
//! tiny initramfs; SMP and memory come from the VMM's ACPI tables and e820 map;
//! the boot timer, graceful shutdown through the ACPI power button, pause and
//! resume, the interactive serial console, reboots requested through the socket
//! and by the guest itself, and a bzImage boot.
//!
//! One nested host for all checks (each L2 boot takes a few seconds in it).

mod common;

use std::time::Duration;

use common::nested::{Nested, tiny_cmdline};
use serde_json::json;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const BANNER: &str = "=== Mica tiny guest: hostname=";

/// The `count=N` values a guest counter loop printed.
fn counts(serial: &str) -> Vec<u64> {
    serial
        .lines()
        .filter_map(|l| l.split_once("count=").map(|(_, n)| n))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[test]
fn nested_linux_guest_lifecycle() {
    let Some(n) = Nested::boot("vmm-boot") else {
        return;
    };
    let vmlinux = n.kernel.vmlinux();
    let initrd = n.images.tiny_initramfs();

    // --- 4 vCPUs and 2 GiB, devices found through ACPI, graceful shutdown ---
    let run = "grep MemTotal /proc/meminfo; \
               echo acpi: $(ls /sys/bus/acpi/devices/); \
               echo online=$(cat /sys/devices/system/cpu/online); \
               echo virtio=$(ls /sys/bus/virtio/devices/ | wc -l); \
               echo hwrng=$(cat /sys/class/misc/hw_random/rng_current); \
               head -c 16 /dev/hwrng | wc -c | sed 's/^/rng-bytes=/'; \
               dmesg | grep -o 'PCI: Using configuration type 1' | sed 's/^/pci: /'";
    let vm = n.start_vm(
        "smp",
        json!({
            "vcpus": 4, "memory_mib": 2048,
            "kernel": vmlinux, "initrd": initrd,
            "cmdline": tiny_cmdline("mica.hostname=smp-guest", Some(run)),
        }),
    );
    vm.wait_serial("=== mica.run exit=0 ===", SECS(180));
    let serial = vm.serial();
    assert!(
        serial.contains("=== Mica tiny guest: hostname=smp-guest ip=none cpus=4 ==="),
        "{serial}"
    );
    let mem_kb: u64 = serial
        .lines()
        // (the shell prompt on the console may share the line)
        .find_map(|l| l.split_once("MemTotal:").map(|(_, v)| v))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {serial}"));
    assert!(
        mem_kb > 1_900_000 && mem_kb <= 2 * 1024 * 1024,
        "the guest sees {mem_kb} kB of 2 GiB"
    );
    assert!(serial.contains("online=0-3"), "{serial}");
    for dev in [
        "LNRO0005:00",
        "ACPI0013:00",
        "PNP0C0C:00",
        "PNP0501:00",
        "PNP0303:00",
    ] {
        assert!(serial.contains(dev), "ACPI device {dev} missing:\n{serial}");
    }
    assert!(serial.contains("virtio=1"), "{serial}");
    assert!(serial.contains("hwrng=virtio_rng"), "{serial}");
    assert!(serial.contains("rng-bytes=16"), "{serial}");
    // The kernel reaches PCI configuration space (the VMM's host bridge), so a
    // healthy boot prints no "PCI: Fatal: No config space access function found"
    // nor any other fatal line.
    assert!(
        serial.contains("pci: PCI: Using configuration type 1"),
        "{serial}"
    );
    assert!(
        !serial.lines().any(|l| l.contains("Fatal")),
        "a healthy boot printed a Fatal line:\n{serial}"
    );

    let (status, info) = vm.api("GET", "/vm", None);
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["state"], "running");
    let boot_ms = info["boot_time_ms"].as_f64().expect("the boot timer fired");
    eprintln!("4 vCPU / 2 GiB guest reached userspace {boot_ms:.0} ms after the VMM started");
    assert!(
        boot_ms > 1.0 && boot_ms < 180_000.0,
        "boot time {boot_ms} ms"
    );
    assert!(
        vm.stderr().contains("guest userspace reached"),
        "{}",
        vm.stderr()
    );

    let (status, answer) = vm.api("POST", "/vm/shutdown", Some(r#"{"timeout_s": 60}"#));
    assert_eq!((status, &answer), (202, &json!({"state": "shutting_down"})));
    assert_eq!(vm.wait_exit(SECS(90)), 0, "{}", vm.stderr());
    let serial = vm.serial();
    assert!(
        serial.contains("=== Mica tiny guest: shutting down ==="),
        "{serial}"
    );
    assert!(
        vm.stderr().contains("the guest powered off"),
        "{}",
        vm.stderr()
    );

    // --- pause/resume, the console socket, reboots ---
    let counter = "i=0; while true; do echo count=$i; i=$((i+1)); sleep 0.2; done";
    let console = "/run/mica-counter-console.sock";
    let vm = n.start_vm(
        "counter",
        json!({
            "vcpus": 1, "memory_mib": 256,
            "kernel": vmlinux, "initrd": initrd,
            // reboot=k: the guest resets through the i8042 (the kernel's default
            // is the ACPI reset register, which the last guest below uses).
            "cmdline": tiny_cmdline("reboot=k", Some(counter)),
            "serial": {"log": "/mica-job/vms/counter/serial.log", "socket": console},
        }),
    );
    vm.wait_serial("count=5", SECS(180));
    let (status, _) = vm.api("PUT", "/vm/state", Some(r#"{"state":"paused"}"#));
    assert_eq!(status, 200);
    let frozen = counts(&vm.serial());
    std::thread::sleep(SECS(3));
    assert_eq!(
        counts(&vm.serial()),
        frozen,
        "the guest counted while paused"
    );
    let (status, _) = vm.api("PUT", "/vm/state", Some(r#"{"state":"running"}"#));
    assert_eq!(status, 200);
    let last = *frozen.last().unwrap();
    vm.wait_serial(&format!("count={}", last + 5), SECS(60));

    // The console socket takes input: the shell on ttyS0 runs it.
    n.sh(&format!(
        "printf 'echo CONSOLE-$((6*7))\\n' | socat -t 3 - UNIX-CONNECT:{console}"
    ));
    vm.wait_serial("CONSOLE-42", SECS(60));

    // A soft reboot: Ctrl-Alt-Del, the guest reboots itself, the VMM boots it again.
    let (status, _) = vm.api("POST", "/vm/reboot", Some(r#"{"hard": false}"#));
    assert_eq!(status, 202);
    let deadline = std::time::Instant::now() + SECS(180);
    while vm.serial().matches(BANNER).count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second boot after Ctrl-Alt-Del\n{}\n{}",
            vm.serial(),
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        vm.serial()
            .contains("=== Mica tiny guest: shutting down ===")
    );
    assert_eq!(vm.api("GET", "/vm", None).1["boots"], 2);

    // `reboot` typed in the guest: nobody asked, so the VMM exits with code 3.
    n.sh(&format!(
        "printf 'reboot\\n' | socat -t 3 - UNIX-CONNECT:{console}"
    ));
    assert_eq!(vm.wait_exit(SECS(120)), 3, "{}", vm.stderr());
    assert!(
        vm.stderr()
            .contains("guest requested reset (i8042 reset line)"),
        "{}",
        vm.stderr()
    );
    assert!(
        n.sh(&format!("test -e {console} && echo left || echo gone"))
            .contains("gone"),
        "the console socket was left behind"
    );

    // --- the same kernel as a bzImage; the guest powers itself off ---
    let vm = n.start_vm(
        "bzimage",
        json!({
            "vcpus": 2, "memory_mib": 256,
            "kernel": n.kernel.bzimage(), "initrd": initrd,
            "cmdline": tiny_cmdline("", Some("poweroff")),
        }),
    );
    assert_eq!(
        vm.wait_exit(SECS(180)),
        0,
        "{}\n{}",
        vm.serial(),
        vm.stderr()
    );
    assert!(vm.serial().contains(BANNER), "{}", vm.serial());

    // --- `reboot` in the guest through the ACPI reset register (the kernel's
    // default): exit code 3 ---
    let vm = n.start_vm(
        "acpi-reset",
        json!({
            "vcpus": 1, "memory_mib": 128, "kernel": vmlinux, "initrd": initrd,
            "cmdline": tiny_cmdline("", Some("reboot")),
        }),
    );
    assert_eq!(
        vm.wait_exit(SECS(180)),
        3,
        "{}\n{}",
        vm.serial(),
        vm.stderr()
    );
    assert!(
        vm.stderr()
            .contains("guest requested reset (ACPI reset register)"),
        "{}",
        vm.stderr()
    );
}
