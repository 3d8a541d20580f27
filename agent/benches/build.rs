//! Build latency of the compute agent: "RPC build received → VMM running"
//! (the agent's `took_ms` in its build report, from the handler receiving the
//! cast to the VMM answering as running), with a cold image cache (the image
//! downloaded from mica-controller's image API and verified) and with the
//! image cached ("image cached → VMM running").
//!
//! ```text
//! cargo build --release -p mica-vmm
//! cargo bench -p mica-agent --bench build -- stub [N]     # this machine's /dev/kvm, stub guest, no network
//! cargo bench -p mica-agent --bench build -- nested [N]   # the nested test host: real agent process,
//!                                                         # tiny Linux guest, bridge/tap/dnsmasq/nftables
//! ```
//!
//! Each build is terminated before the next; builds run one at a time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nested::{HOST, NestedCompute, default_group, instance, port};
use common::{ImageApi, TestBus, fast_options};
use mica_agent::testing::{FakeConductor, instance_spec, new_uuid};
use mica_agent::{Agent, VmmBackend};

fn main() {
    // Quiet logs: the figures are the output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mode = args.first().map(String::as_str).unwrap_or("stub");
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    match mode {
        "stub" => stub(n),
        "nested" => nested(n),
        other => {
            eprintln!("usage: build [stub|nested] [N] (not {other:?})");
            std::process::exit(2);
        }
    }
}

fn summary(name: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<44} n={:<3} p50={:>6} ms  p95={:>6} ms  min={:>6} ms  max={:>6} ms",
        v.len(),
        pct(0.5),
        pct(0.95),
        v[0],
        v[v.len() - 1]
    );
}

fn tiny_ext4() -> Vec<u8> {
    std::fs::read(
        mica_tests::artifacts::GuestImages::locate()
            .unwrap()
            .tiny_ext4(),
    )
    .unwrap()
}

/// This machine: the idle stub guest (any KVM runs it), a 64 MB raw image
/// (the tiny guest's root file system), no ports.
fn stub(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = TestBus::memory();
        let rpc = bus.connect().await;
        let conductor = FakeConductor::serve(&rpc).await.unwrap();
        let api = ImageApi::start().await;
        let image = api.upload("tiny", "raw", tiny_ext4(), &api.base).await;
        let state = tempfile::tempdir().unwrap();
        let run = tempfile::Builder::new()
            .prefix("mb")
            .tempdir_in("/tmp")
            .unwrap();
        let mut cfg = mica_agent::Config::default();
        cfg.agent.state_dir = state.path().to_owned();
        cfg.agent.run_dir = run.path().to_owned();
        cfg.vmm.binary = mica_tests::artifacts::workspace_binary("mica-vmm")
            .expect("cargo build --release -p mica-vmm")
            .display()
            .to_string();
        cfg.vmm.kernel = mica_tests::artifacts::idle_guest().to_owned();
        let backend = VmmBackend::new("bench", &cfg).unwrap();
        let agent = Agent::start(rpc.clone(), fast_options("bench"), Arc::new(backend))
            .await
            .unwrap();
        agent.registered(Duration::from_secs(10)).await.unwrap();

        let mut cold = Vec::new();
        let mut warm = Vec::new();
        let mut round_trip = Vec::new();
        for i in 0..=n {
            let (uuid, vmm) = (new_uuid(), new_uuid());
            let sent = Instant::now();
            conductor
                .build("bench", instance_spec(&uuid, image.clone(), 1, 32, 1), &vmm)
                .await
                .unwrap();
            let b = conductor
                .wait_built(&uuid, &vmm, Duration::from_secs(60))
                .await
                .expect("a build report");
            let rt_ms = sent.elapsed().as_millis() as u64;
            let took = b.result.expect("built").took_ms;
            if i == 0 {
                cold.push(took);
            } else {
                warm.push(took);
                round_trip.push(rt_ms);
            }
            conductor.terminate("bench", &uuid, 0).await.unwrap();
            conductor
                .wait_terminated(&uuid, Duration::from_secs(30))
                .await
                .unwrap();
        }
        println!(
            "mica-agent build latency, stub guest on this machine's /dev/kvm (memory:// bus):"
        );
        summary("RPC build received -> VMM running, cold cache", cold);
        summary("image cached -> VMM running", warm);
        summary("conductor cast -> build report (cached)", round_trip);
        agent.shutdown().await;
    });
}

/// The nested test host: the agent as its own process in L1 (release
/// build), RabbitMQ and the image API on this machine, the tiny Linux guest
/// on a port of the flat network (bridge, tap, dnsmasq, nftables).
fn nested(n: usize) {
    let Some(c) = NestedCompute::boot("agent-bench", 3072, "") else {
        eprintln!("the nested test host is unavailable");
        std::process::exit(1);
    };
    c.start_agent();
    let terminate = |uuid: &str| {
        let t = c.rt.block_on(async {
            c.conductor.terminate(HOST, uuid, 0).await.unwrap();
            c.conductor
                .wait_terminated(uuid, Duration::from_secs(60))
                .await
        });
        assert!(t.expect("terminated").result.is_ok());
    };
    // The first build finds nothing on the host: it downloads the image and
    // makes the network (bridge, dnsmasq, NAT). It keeps running while the
    // others are built (and deleted) one at a time, so they find the image
    // cached and the network in place, as on a host in use.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut first = None;
    for i in 0..=n {
        let spec = instance(
            &c.tiny,
            &format!("bench-{i}"),
            port(100 + i as u8, vec![default_group(&[], vec![])]),
        );
        let (_, report) = c.build(&spec, Duration::from_secs(300));
        let took = report.result.expect("built").took_ms;
        if i == 0 {
            cold.push(took);
            first = Some(spec.uuid.clone());
        } else {
            warm.push(took);
            terminate(&spec.uuid);
        }
    }
    terminate(&first.unwrap());
    // The agent logs where each build's time went.
    let log = c.agent_log();
    let mut phases: Vec<[u64; 4]> = Vec::new();
    for line in log.lines().filter(|l| l.contains("build phases")) {
        let get = |k: &str| -> u64 {
            line.split(&format!("{k}="))
                .nth(1)
                .and_then(|v| v.split(|ch: char| !ch.is_ascii_digit()).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        phases.push([
            get("image_ms"),
            get("disks_ms"),
            get("network_ms"),
            get("vmm_ms"),
        ]);
    }
    println!(
        "mica-agent build latency in the nested test host (L1 under QEMU TCG; amqp:// bus; tiny Linux guest with one port):"
    );
    summary("RPC build received -> VMM running, cold cache", cold);
    summary("image cached (network in place) -> VMM running", warm);
    if phases.len() > 1 {
        let names = [
            "image (download+verify / cache hit)",
            "disks",
            "network (bridge, tap, DHCP, nft)",
            "VMM start to running",
        ];
        println!("  phases of the first build: {:?} ms", phases[0]);
        for (k, name) in names.iter().enumerate() {
            summary(
                &format!("  cached builds: {name}"),
                phases[1..].iter().map(|p| p[k]).collect(),
            );
        }
    }
    c.stop_agent("TERM");
}
