//! mica-vmm on this machine's `/dev/kvm` with the stub guests (tests/stub/):
//! boot and power-off, the control socket and its state machine, pause/resume,
//! reboot, guest reset, signals, stale sockets. Real Linux guests are in the
//! `nested_*` tests.

mod common;

use std::time::Duration;

use common::{Vmm, kvm_available, ticks};
use mica_tests::artifacts::{counter_guest, idle_guest, reset_guest, stub_guest};
use serde_json::json;

fn kvm() -> bool {
    mica_tests::require("/dev/kvm", kvm_available())
}

fn config(kernel: &std::path::Path) -> serde_json::Value {
    json!({ "vcpus": 2, "memory_mib": 256, "kernel": kernel })
}

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn stub_guest_runs_and_powers_off() {
    if !kvm() {
        return;
    }
    let mut vmm = Vmm::start(config(stub_guest()));
    assert_eq!(vmm.wait_exit(SECS(20)), 0, "{}", vmm.stderr());
    assert_eq!(vmm.serial(), "MICA-STUB-OK\n");
    assert!(
        vmm.stderr().contains("the guest powered off"),
        "{}",
        vmm.stderr()
    );
    assert!(!vmm.api.exists(), "the control socket is removed at exit");
}

#[test]
fn pause_resume_reboot_and_shutdown_timeout_with_the_counter_guest() {
    if !kvm() {
        return;
    }
    let mut vmm = Vmm::start(config(counter_guest()));
    vmm.wait_until(SECS(20), "three ticks", |v| ticks(&v.serial()).len() >= 3);

    let (status, info) = vmm.api("GET", "/vm", None);
    assert_eq!(status, 200);
    assert_eq!(info["state"], "running");
    assert_eq!(info["boots"], 1);
    assert_eq!(info["config"]["vcpus"], 2);
    assert!(info["uptime_ms"].as_u64().unwrap() > 0);

    // Paused: the count stands still.
    let (status, answer) = vmm.api("PUT", "/vm/state", Some(r#"{"state":"paused"}"#));
    assert_eq!((status, &answer), (200, &json!({"state": "paused"})));
    let frozen = ticks(&vmm.serial());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ticks(&vmm.serial()), frozen, "the guest ran while paused");
    assert_eq!(vmm.api("GET", "/vm", None).1["state"], "paused");
    // Asking again is not an error; shutdown and reboot are conflicts.
    assert_eq!(
        vmm.api("PUT", "/vm/state", Some(r#"{"state":"paused"}"#)).0,
        200
    );
    let (status, err) = vmm.api("POST", "/vm/shutdown", Some(r#"{"timeout_s": 5}"#));
    assert_eq!(status, 409);
    assert!(err["error"].as_str().unwrap().contains("paused"), "{err}");
    assert_eq!(vmm.api("POST", "/vm/reboot", None).0, 409);

    // Resumed: the count moves on from where it stood.
    let (status, _) = vmm.api("PUT", "/vm/state", Some(r#"{"state":"running"}"#));
    assert_eq!(status, 200);
    let last = *frozen.last().unwrap();
    vmm.wait_until(SECS(20), "ticks after resume", |v| {
        ticks(&v.serial()).last().copied().unwrap_or(0) >= last + 3
    });
    let after = ticks(&vmm.serial());
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "the count continued without restarting: {after:?}"
    );

    // A hard reboot boots the guest again in the same process.
    let (status, answer) = vmm.api("POST", "/vm/reboot", Some(r#"{"hard": true}"#));
    assert_eq!((status, &answer), (202, &json!({"state": "running"})));
    vmm.wait_until(SECS(20), "the count to restart", |v| {
        let t = ticks(&v.serial());
        t.iter().filter(|&&n| n == 0).count() == 2 && t.last().copied().unwrap_or(0) >= 1
    });
    assert_eq!(vmm.api("GET", "/vm", None).1["boots"], 2);

    let (status, m) = vmm.api("GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(m["vcpu"]["io_exits"].as_u64().unwrap() > 10, "{m}");
    assert!(m["serial"]["out_bytes"].as_u64().unwrap() > 20, "{m}");
    assert_eq!(m["errors"], 0, "{m}");

    // Errors of the socket itself.
    assert_eq!(vmm.api("GET", "/nope", None).0, 404);
    assert_eq!(vmm.api("DELETE", "/vm", None).0, 405);
    assert_eq!(
        vmm.api("PUT", "/vm/state", Some(r#"{"state":"asleep"}"#)).0,
        400
    );

    // The counter ignores the power button: the timeout stops it (exit code 4).
    let (status, answer) = vmm.api("POST", "/vm/shutdown", Some(r#"{"timeout_s": 1}"#));
    assert_eq!((status, &answer), (202, &json!({"state": "shutting_down"})));
    assert_eq!(
        vmm.api("PUT", "/vm/state", Some(r#"{"state":"paused"}"#)).0,
        409
    );
    assert_eq!(vmm.api("POST", "/vm/shutdown", None).0, 409);
    let started = std::time::Instant::now();
    assert_eq!(vmm.wait_exit(SECS(10)), 4, "{}", vmm.stderr());
    assert!(started.elapsed() < SECS(3));
    assert!(
        vmm.stderr().contains("did not shut down in time"),
        "{}",
        vmm.stderr()
    );
    assert!(!vmm.api.exists());
}

#[test]
fn stop_through_the_socket_and_sigterm_exit_zero() {
    if !kvm() {
        return;
    }
    let mut vmm = Vmm::start(config(idle_guest()));
    vmm.wait_serial("MICA-IDLE-READY", SECS(20));
    let (status, answer) = vmm.api("POST", "/vm/stop", None);
    assert_eq!((status, &answer), (200, &json!({"state": "stopped"})));
    assert_eq!(vmm.wait_exit(SECS(10)), 0);
    assert!(!vmm.api.exists());

    let mut vmm = Vmm::start(config(idle_guest()));
    vmm.wait_serial("MICA-IDLE-READY", SECS(20));
    vmm.signal(15);
    assert_eq!(vmm.wait_exit(SECS(10)), 0);
    assert!(
        vmm.stderr().contains("stopped by signal 15"),
        "{}",
        vmm.stderr()
    );
    assert!(!vmm.api.exists());
}

#[test]
fn a_guest_reset_ends_the_vmm_with_its_own_exit_code() {
    if !kvm() {
        return;
    }
    let mut vmm = Vmm::start(config(reset_guest()));
    assert_eq!(vmm.wait_exit(SECS(20)), 3, "{}", vmm.stderr());
    assert!(vmm.serial().contains("MICA-RESET"));
    assert!(
        vmm.stderr()
            .contains("guest requested reset (i8042 reset line)"),
        "{}",
        vmm.stderr()
    );
}

#[test]
fn serial_console_socket_streams_the_output() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("console.sock");
    let log = dir.path().join("serial.log");
    let mut cfg = config(counter_guest());
    cfg["serial"] = json!({ "log": log, "socket": sock });
    let mut vmm = Vmm::start(cfg);
    let mut client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    client.set_read_timeout(Some(SECS(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    // Three ticks seen: "tick 1\n" is complete.
    while ticks(&String::from_utf8_lossy(&got)).len() < 3 {
        use std::io::Read;
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "the console socket closed");
        got.extend_from_slice(&buf[..n]);
    }
    vmm.api("POST", "/vm/stop", None);
    assert_eq!(vmm.wait_exit(SECS(10)), 0);
    assert!(!sock.exists(), "the console socket is removed at exit");
    assert!(std::fs::read_to_string(&log).unwrap().contains("tick 1\n"));
}

#[test]
fn stale_sockets_are_replaced_and_live_ones_refused() {
    if !kvm() {
        return;
    }
    let first = Vmm::start(config(idle_guest()));
    first.wait_serial("MICA-IDLE-READY", SECS(20));
    // A second VMM on the same control socket fails and leaves it alone.
    let cfg = first.dir.path().join("vm.json");
    let out = std::process::Command::new(common::vmm_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--api-sock")
        .arg(&first.api)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another process is listening"), "{err}");
    assert_eq!(
        first.api("GET", "/vm", None).0,
        200,
        "the first VMM still answers"
    );

    // SIGKILL leaves the socket file behind; the next VMM replaces it.
    let mut first = first;
    let api = first.api.clone();
    first.signal(9);
    first.wait_exit(SECS(10));
    assert!(api.exists());
    let out = std::process::Command::new(common::vmm_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--api-sock")
        .arg(&api)
        .arg("--log-level")
        .arg("info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + SECS(10);
    while common::http(&api, "GET", "/vm", None).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer on the replaced socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    common::http(&api, "POST", "/vm/stop", None).unwrap();
    let out = out.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("removing the stale socket"));
}

#[test]
fn a_kernel_that_cannot_load_fails_and_removes_its_sockets() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("not-a-kernel");
    std::fs::write(&kernel, "just text").unwrap();
    let cfg = dir.path().join("vm.json");
    let console = dir.path().join("console.sock");
    std::fs::write(
        &cfg,
        json!({"vcpus": 1, "memory_mib": 64, "kernel": kernel, "serial": {"socket": console}})
            .to_string(),
    )
    .unwrap();
    let api = dir.path().join("api.sock");
    let out = std::process::Command::new(common::vmm_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--api-sock")
        .arg(&api)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot load the kernel"), "{err}");
    assert!(!api.exists() && !console.exists(), "sockets left behind");
}
