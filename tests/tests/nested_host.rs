//! The nested test host boots and offers a real `/dev/kvm`.

use mica_tests::nested::{NestedHost, NestedOptions};
use mica_tests::require;

#[test]
fn nested_host_runs_commands_and_offers_kvm() {
    if !require("the nested test host", NestedHost::available()) {
        return;
    }
    let host = NestedHost::boot(NestedOptions::new("kvm-probe")).expect("nested host boots");
    eprintln!(
        "nested host ready in {:?}: {}",
        host.boot_time(),
        host.ready_line()
    );
    assert!(
        host.ready_line().contains("kvm=yes"),
        "L1 has no /dev/kvm: {}\n{}",
        host.ready_line(),
        host.console_log()
    );

    // A command runs, its output and exit code come back.
    let out = host.run("echo hello from L1; uname -r; exit 7").unwrap();
    assert_eq!(out.code, 7);
    assert!(out.stdout.starts_with("hello from L1\n"), "{}", out.stdout);

    // KVM inside L1 answers like real KVM.
    let probe = env!("CARGO_BIN_EXE_mica-kvm-probe");
    let out = host
        .run(probe)
        .unwrap()
        .expect_success("mica-kvm-probe in L1");
    assert!(out.stdout.contains("api_version=12\n"), "{}", out.stdout);
    assert!(out.stdout.contains("cap_irqchip=true"), "{}", out.stdout);

    // Nested virtualization really is on (kvm-amd with nested paging).
    let out = host
        .run("cat /sys/module/kvm_amd/parameters/nested /sys/module/kvm_amd/parameters/npt")
        .unwrap()
        .expect_success("kvm_amd parameters");
    // `nested` is an integer parameter, `npt` a boolean one.
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["1", "Y"]
    );
}

#[test]
fn nested_host_watchdog_kicks_a_stalled_l1() {
    if !require("the nested test host", NestedHost::available()) {
        return;
    }
    let host = NestedHost::boot(NestedOptions::new("watchdog")).expect("nested host boots");
    // A healthy, idle L1 for longer than the watchdog's stall threshold
    // (two 2 s periods without CPU use): no kick.
    host.run("sleep 7").unwrap().expect_success("sleep");
    assert_eq!(host.watchdog_log(), "", "watchdog fired on a healthy L1");
    // Freeze L1's vCPUs: QEMU then uses no CPU, exactly like a stalled L1.
    host.qmp("stop").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while host.watchdog_log().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    host.qmp("cont").unwrap();
    let log = host.watchdog_log();
    assert!(
        log.contains("injected an NMI (ok)"),
        "watchdog log: {log:?}"
    );
    // The NMI did no harm: L1 still runs jobs.
    let out = host
        .run("echo alive")
        .unwrap()
        .expect_success("job after NMI");
    assert_eq!(out.stdout, "alive\n");
}
