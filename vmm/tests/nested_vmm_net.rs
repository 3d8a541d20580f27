//! virtio-net in the nested test host: the guest's NIC on a tap inside a
//! network namespace this test creates in L1; ping works both ways.

mod common;

use std::time::Duration;

use common::nested::{Nested, tiny_cmdline};
use serde_json::json;

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn nested_ping_both_ways_through_a_tap_in_a_netns() {
    let Some(n) = Nested::boot("vmm-net") else {
        return;
    };
    n.sh("ip netns add mica-net && \
         ip -n mica-net link set lo up && \
         ip -n mica-net tuntap add dev tap0 mode tap && \
         ip -n mica-net addr add 10.0.0.1/24 dev tap0 && \
         ip -n mica-net link set tap0 up");
    let run = "ping -c 3 -W 5 10.0.0.1; echo ping-exit=$?; ip -o link show eth0";
    let vm = n.start_vm_with(
        "net",
        json!({
            "vcpus": 1, "memory_mib": 256,
            "kernel": n.kernel.vmlinux(), "initrd": n.images.tiny_initramfs(),
            "nics": [{"id": "eth0", "tap": "tap0", "mac": "52:54:00:12:34:56"}],
            "cmdline": tiny_cmdline("mica.ip=10.0.0.2/24", Some(run)),
        }),
        "ip netns exec mica-net",
    );
    vm.wait_serial("=== mica.run exit=", SECS(180));
    let serial = vm.serial();
    assert!(serial.contains("ip=10.0.0.2/24"), "{serial}");
    assert!(
        serial.contains("ping-exit=0"),
        "guest -> host ping failed:\n{serial}"
    );
    assert!(serial.contains("52:54:00:12:34:56"), "{serial}");

    // (busybox ping: this machine has no iputils.)
    let out =
        n.sh("ip netns exec mica-net busybox ping -c 3 -W 5 10.0.0.2 2>&1; echo host-ping-exit=$?");
    assert!(
        out.contains("host-ping-exit=0"),
        "host -> guest ping failed:\n{out}"
    );
    assert!(out.contains("3 packets received"), "{out}");

    let (_, m) = vm.api("GET", "/metrics", None);
    let eth0 = &m["net"]["eth0"];
    assert!(eth0["rx_packets"].as_u64().unwrap() >= 3, "{m}");
    assert!(eth0["tx_packets"].as_u64().unwrap() >= 3, "{m}");
    assert_eq!(eth0["errors"], 0, "{m}");

    let (status, _) = vm.api("POST", "/vm/stop", None);
    assert_eq!(status, 200);
    assert_eq!(vm.wait_exit(SECS(30)), 0, "{}", vm.stderr());
}
