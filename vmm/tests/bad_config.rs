//! Bad configurations and command lines fail at once, naming the field, with a
//! non-zero exit code and nothing left behind. No KVM needed: the VMM refuses
//! them before it opens `/dev/kvm`.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::json;

struct Run {
    code: Option<i32>,
    stderr: String,
}

fn run(dir: &Path, config: &str) -> Run {
    let cfg = dir.join("vm.json");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(common::vmm_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--api-sock")
        .arg(dir.join("api.sock"))
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn each_bad_config_gives_its_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = mica_tests::artifacts::stub_guest();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let base = json!({"vcpus": 1, "memory_mib": 128, "kernel": kernel});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        c.to_string()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing kernel",
            json!({"vcpus": 1, "memory_mib": 128}).to_string(),
            "missing field `kernel`",
        ),
        (
            "kernel that does not exist",
            with("kernel", json!("/nonexistent/vmlinux")),
            "kernel: /nonexistent/vmlinux: No such file or directory",
        ),
        (
            "memory 0",
            with("memory_mib", json!(0)),
            "memory_mib: must be between 32 and",
        ),
        (
            "nonexistent disk",
            with(
                "disks",
                json!([{"id": "root", "path": "/nonexistent/disk.img"}]),
            ),
            "disks[0].path: /nonexistent/disk.img: No such file or directory",
        ),
        (
            "duplicate disk ids",
            with(
                "disks",
                json!([{"id": "data", "path": disk}, {"id": "data", "path": disk, "read_only": true}]),
            ),
            "disks[1].id: duplicate id \"data\" (also disks[0].id)",
        ),
        (
            "unknown field",
            with("ballon", json!(true)),
            "unknown field `ballon`",
        ),
        (
            "wrong type",
            with("vcpus", json!("four")),
            "vcpus: invalid type: string \"four\"",
        ),
        ("not JSON", "{vcpus: 1".to_string(), "key must be a string"),
        (
            "VNC on a non-loopback address",
            with("display", json!({"vnc_tcp": "0.0.0.0:5901"})),
            "display.vnc_tcp: 0.0.0.0:5901 is not a loopback address",
        ),
    ];
    for (what, config, want) in cases {
        let r = run(dir.path(), &config);
        assert_eq!(r.code, Some(1), "{what}: exit code; stderr: {}", r.stderr);
        assert!(
            r.stderr.contains(want),
            "{what}: stderr does not say {want:?}:\n{}",
            r.stderr
        );
        assert!(
            r.stderr.starts_with("mica-vmm: invalid configuration"),
            "{what}: {}",
            r.stderr
        );
        assert!(
            !dir.path().join("api.sock").exists(),
            "{what}: socket left behind"
        );
    }
    // A missing configuration file.
    let out = Command::new(common::vmm_bin())
        .args(["--config", "/nonexistent/vm.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read the configuration /nonexistent/vm.json")
    );
}

#[test]
fn command_line_errors_and_help() {
    let out = Command::new(common::vmm_bin())
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument \"--frobnicate\""));
    let out = Command::new(common::vmm_bin()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config <path> is required"));

    let help = Command::new(common::vmm_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for field in [
        "vcpus",
        "memory_mib",
        "kernel",
        "initrd",
        "cmdline",
        "disks",
        "read_only",
        "nics",
        "tap",
        "mac",
        "serial",
        "log_max_bytes",
        "socket",
        "--api-sock",
        "GET  /vm",
        "/vm/shutdown",
        "/metrics",
        "EXIT CODES",
    ] {
        assert!(text.contains(field), "--help does not document {field}");
    }
}
