//! Disks and the stock kernel in the nested test host:
//! - an ext4 root on virtio-blk: a file written and synced in one boot is there
//!   after the VMM is SIGKILLed and started again;
//! - a read-only disk: the guest sees it read-only, writes to it fail and the
//!   image stays untouched (that the VMM itself refuses writes to a read-only
//!   disk, whatever the guest does, is tested without KVM in
//!   `devices::virtio::block::request`);
//! - Debian's cloud kernel (a bzImage with virtio as modules and no command-line
//!   virtio-mmio) finds its disk and NIC through ACPI and reaches its init.

mod common;

use std::time::Duration;

use common::nested::{Nested, tiny_cmdline};
use serde_json::json;

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn nested_disks_persistence_read_only_and_stock_kernel() {
    let Some(n) = Nested::boot("vmm-disk") else {
        return;
    };
    let vmlinux = n.kernel.vmlinux();
    let ext4 = n.images.tiny_ext4();
    // Disk images in L1's memory: private to this session, fast.
    n.sh(&format!(
        "cp {e} /tmp/root.ext4 && cp {e} /tmp/data.ext4 && sha256sum /tmp/data.ext4 > /tmp/data.sum",
        e = ext4.display()
    ));
    let disks = json!([
        {"id": "root", "path": "/tmp/root.ext4"},
        {"id": "data-ro", "path": "/tmp/data.ext4", "read_only": true},
    ]);

    // --- first boot: write and sync a file, poke at the read-only disk ---
    let run = "echo persisted-$(cat /proc/sys/kernel/random/uuid) > /persist.txt; sync; \
               echo wrote=$(cat /persist.txt); \
               echo serials=$(cat /sys/block/vda/serial)/$(cat /sys/block/vdb/serial); \
               echo ro=$(cat /sys/block/vda/ro)/$(cat /sys/block/vdb/ro); \
               mount /dev/vdb /mnt; touch /mnt/new-file; echo touch=$?; \
               dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct; echo dd=$?";
    let vm = n.start_vm(
        "disk1",
        json!({
            "vcpus": 2, "memory_mib": 256, "kernel": vmlinux, "disks": disks,
            "cmdline": tiny_cmdline("root=/dev/vda rw", Some(run)),
        }),
    );
    vm.wait_serial("=== mica.run exit=", SECS(180));
    let serial = vm.serial();
    // (The shell prompt on the console may share a line with the output.)
    let written = serial
        .lines()
        .find_map(|l| l.split_once("wrote=").map(|(_, w)| w))
        .unwrap_or_else(|| panic!("nothing written:\n{serial}"))
        .trim()
        .to_string();
    assert!(written.starts_with("persisted-"), "{serial}");
    assert!(serial.contains("serials=root/data-ro"), "{serial}");
    assert!(serial.contains("ro=0/1"), "{serial}");
    assert!(
        serial.contains("touch=1"),
        "a write to the read-only mount worked:\n{serial}"
    );
    assert!(
        serial.contains("dd=1"),
        "a raw write to the read-only disk worked:\n{serial}"
    );
    let (_, m) = vm.api("GET", "/metrics", None);
    assert_eq!(m["block"]["data-ro"]["write_ops"], 0, "{m}");
    assert!(
        m["block"]["data-ro"]["read_ops"].as_u64().unwrap() >= 1,
        "{m}"
    );
    assert!(
        m["block"]["root"]["write_ops"].as_u64().unwrap() >= 1,
        "{m}"
    );
    assert!(
        m["block"]["root"]["flush_ops"].as_u64().unwrap() >= 1,
        "{m}"
    );
    vm.kill9();
    n.sh("sha256sum -c /tmp/data.sum");

    // --- second boot after SIGKILL: the file is there. Eight more disks put
    // virtio devices on IOAPIC pins 16 and up; each must answer a read. ---
    n.sh("for i in 1 2 3 4 5 6 7 8; do printf 'disk-%s-' $i | dd of=/tmp/extra$i.img conv=notrunc 2>/dev/null; truncate -s 1M /tmp/extra$i.img; done");
    let mut many = disks.as_array().unwrap().clone();
    for i in 1..=8 {
        many.push(json!({"id": format!("extra{i}"), "path": format!("/tmp/extra{i}.img"), "read_only": true}));
    }
    let run = "echo found=$(cat /persist.txt); \
               for d in /sys/block/vd*; do echo \"$(cat $d/serial)=$(head -c 6 /dev/${d##*/})\"; done; \
               echo irqs: $(grep -c virtio /proc/interrupts); poweroff";
    let vm = n.start_vm(
        "disk2",
        json!({
            "vcpus": 2, "memory_mib": 256, "kernel": vmlinux, "disks": many,
            "cmdline": tiny_cmdline("root=/dev/vda rw", Some(run)),
        }),
    );
    assert_eq!(vm.wait_exit(SECS(180)), 0, "{}", vm.stderr());
    let serial = vm.serial();
    assert!(
        serial.contains(&format!("found={written}")),
        "expected {written} after the restart:\n{serial}"
    );
    for i in 1..=8 {
        assert!(
            serial.contains(&format!("extra{i}=disk-{i}")),
            "disk extra{i} did not answer:\n{serial}"
        );
    }
    // Ten disks and the rng, each with its own interrupt line.
    assert!(serial.contains("irqs: 11"), "{serial}");

    // --- Debian's cloud kernel: virtio found through ACPI, then its init ---
    n.sh("ip tuntap add dev tapstock mode tap && ip link set tapstock up");
    let vm = n.start_vm(
        "stock",
        json!({
            "vcpus": 2, "memory_mib": 512,
            "kernel": n.images.stock_kernel(), "initrd": n.images.stock_initramfs(),
            "disks": [{"id": "root", "path": "/tmp/root.ext4"}],
            "nics": [{"id": "eth0", "tap": "tapstock", "mac": "52:54:00:00:00:42"}],
            "cmdline": tiny_cmdline(
                "root=/dev/vda mica.ip=10.9.9.2/24",
                Some("cat /sys/class/net/eth0/address; poweroff"),
            ),
        }),
    );
    assert_eq!(
        vm.wait_exit(SECS(300)),
        0,
        "{}\n{}",
        vm.serial(),
        vm.stderr()
    );
    let serial = vm.serial();
    let line = serial
        .lines()
        .find(|l| l.contains("=== Mica stock-kernel initramfs:"))
        .unwrap_or_else(|| panic!("no initramfs banner:\n{serial}"));
    assert!(line.contains("kernel=6.1"), "{line}");
    assert!(line.contains("disks=vda"), "{line}");
    assert!(line.contains("nics=eth0"), "{line}");
    assert!(
        serial.contains("=== Mica tiny guest: hostname="),
        "its init did not run:\n{serial}"
    );
    assert!(serial.contains("52:54:00:00:00:42"), "{serial}");
}
