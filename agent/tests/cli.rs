//! The `mica-agent` binary: its configuration commands, its errors, and a
//! whole run (simulated backend, over RabbitMQ) from start to SIGTERM.

mod common;

use std::process::Command;
use std::time::Duration;

use common::TestBus;
use mica_agent::testing::{FakeConductor, Report, instance_spec, new_uuid};

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica-agent"));
    c.env_remove("MICA_AGENT_CONFIG").env_remove("RUST_LOG");
    c
}

#[test]
fn config_defaults_are_the_documented_file_and_overrides_show() {
    let out = agent().args(["config", "defaults"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        mica_agent::config::DEFAULTS_TOML
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "[agent]\nhost = \"from-file\"\n[rpc]\nurl = \"amqp://u:secret@h/v\"\n",
    )
    .unwrap();
    let out = agent()
        .arg("--config")
        .arg(&file)
        .args([
            "--state-dir",
            "/srv/mica",
            "--set",
            "vmm.extra_cmdline=noxsave",
            "config",
            "show",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(shown["agent"]["host"].as_str(), Some("from-file"));
    assert_eq!(shown["agent"]["state_dir"].as_str(), Some("/srv/mica"));
    assert_eq!(shown["vmm"]["extra_cmdline"].as_str(), Some("noxsave"));
    assert_eq!(
        shown["rpc"]["url"].as_str(),
        Some("amqp://u:***@h/v"),
        "the password is hidden"
    );
}

#[test]
fn a_bad_configuration_is_refused_with_its_reason() {
    let out = agent()
        .args(["--set", "agent.report_interval_s=0", "config", "show"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("report_interval_s"));
    let out = agent()
        .args(["--config", "/nonexistent/agent.toml", "config", "show"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn a_simulated_agent_process_serves_until_sigterm() {
    let bus = TestBus::amqp();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let conductor =
        rt.block_on(async { FakeConductor::serve(&bus.connect().await).await.unwrap() });
    let mut child = agent()
        .args([
            "--backend",
            "simulated",
            "--host",
            "cli-sim",
            "--rpc-url",
            &bus.url,
        ])
        .args([
            "--set",
            &format!("rpc.namespace=\"{}\"", bus.options.namespace),
        ])
        .args([
            "--set",
            "rpc.queue_expiry_s=600",
            "--set",
            "simulated.build_delay_ms=100",
            // The console channel on loopback only, on a port of its own.
            "--set",
            "console.listen=\"127.0.0.1:0\"",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let registered = rt.block_on(conductor.wait_for(Duration::from_secs(30), |r| match r {
        Report::Registered(req) if req.host == "cli-sim" => Some(()),
        _ => None,
    }));
    assert!(registered.is_some(), "the agent process registered");
    let (uuid, vmm) = (new_uuid(), new_uuid());
    let image = mica_rpc::compute::ImageSpec {
        id: "i".into(),
        name: "i".into(),
        disk_format: "raw".into(),
        size: 1,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        download_url: "http://x".into(),
        download_token: String::new(),
        properties: Default::default(),
    };
    let built = rt.block_on(async {
        conductor
            .build("cli-sim", instance_spec(&uuid, image, 1, 64, 1), &vmm)
            .await
            .unwrap();
        conductor
            .wait_built(&uuid, &vmm, Duration::from_secs(30))
            .await
    });
    let took = built
        .expect("a build report")
        .result
        .expect("built")
        .took_ms;
    assert!(took >= 100, "{took} ms");

    mica_agent::sys::kill(child.id(), libc::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exits 0 on SIGTERM: {status}");
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("stopping (instances keep running)"), "{log}");
    assert!(!log.contains('\u{1b}'), "plain text when not on a terminal");
}
