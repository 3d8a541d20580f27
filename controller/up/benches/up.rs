//! `mica up` figures (BENCHMARKS.md): start-up, `server create` → ACTIVE over
//! 20 sequential creates of m1.nano (p50, p95), 50 servers created at once
//! (time until all are ACTIVE), and resident memory (mica up idle, and per
//! server: the controller's share and the VMM's).
//!
//! `cargo bench -p mica --bench up` (needs `make setup`; on a machine whose
//! KVM cannot run Linux guests the compute host is the nested test host).
//! `MICA_BENCH_SEQUENTIAL` and `MICA_BENCH_BURST` change the counts.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mica::cloud::Cloud;
use mica::compute::{NestedCompute, NestedComputeOptions};
use reqwest::Method;
use serde_json::{Value, json};

#[path = "../tests/common/distributed.rs"]
mod distributed;

use distributed::{ADMIN_PASSWORD, Distributed};

async fn create(api: &Cloud, name: &str, image: &str, net: &str) -> String {
    let body = json!({"server": {"name": name, "imageRef": image, "flavorRef": "42",
        "networks": [{"uuid": net}]}});
    let (status, v) = api
        .call(Method::POST, "compute", "/servers", Some(body))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 202, "create {name}: {v}");
    v["server"]["id"].as_str().unwrap().to_owned()
}

async fn status(api: &Cloud, id: &str) -> String {
    let (_, v) = api
        .call(Method::GET, "compute", &format!("/servers/{id}"), None)
        .await
        .unwrap();
    v["server"]["status"].as_str().unwrap_or("GONE").to_owned()
}

async fn delete_all(api: &Cloud, ids: &[String]) {
    for id in ids {
        api.call(Method::DELETE, "compute", &format!("/servers/{id}"), None)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    for id in ids {
        while status(api, id).await != "GONE" {
            assert!(Instant::now() < deadline, "{id} not deleted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The VMMs' resident memory on the compute host (KiB, sum and count).
fn vmm_rss(job_folder: Option<&Path>) -> (u64, usize) {
    let script = "ps -o rss= -C mica-vmm";
    let out = match job_folder {
        Some(j) => {
            mica_tests::nested::run_in_job_folder(j, script, Duration::from_secs(60))
                .unwrap()
                .stdout
        }
        None => String::from_utf8_lossy(
            &Command::new("sh")
                .args(["-c", script])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned(),
    };
    let v: Vec<u64> = out
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    (v.iter().sum(), v.len())
}

/// What the create benchmarks measured.
struct Measured {
    /// Sorted, ms.
    times: Vec<f64>,
    accepted: Duration,
    all_active: Duration,
    ids: Vec<String>,
}

/// Warm-up, `sequential` creates one at a time, then `burst` at once.
async fn measure(api: &Cloud, sequential: usize, burst: usize) -> Measured {
    api.call(
        Method::PUT,
        "compute",
        &format!("/os-quota-sets/{}", api.project_id),
        Some(json!({"quota_set": {"instances": -1, "cores": -1, "ram": -1}})),
    )
    .await
    .unwrap();
    let (_, imgs) = api
        .call(Method::GET, "image", "/v2/images?name=tiny", None)
        .await
        .unwrap();
    let image = imgs["images"][0]["id"].as_str().unwrap().to_owned();
    let (_, nets) = api
        .call(Method::GET, "network", "/v2.0/networks?name=shared", None)
        .await
        .unwrap();
    let net = nets["networks"][0]["id"].as_str().unwrap().to_owned();

    // Warm-up: the image reaches the host's cache. (A host that has just
    // registered may not have reported its inventory yet: try again.)
    for attempt in 1.. {
        let w = create(api, "warm-up", &image, &net).await;
        let status = loop {
            match status(api, &w).await.as_str() {
                s @ ("ACTIVE" | "ERROR") => break s.to_owned(),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        delete_all(api, &[w]).await;
        if status == "ACTIVE" {
            break;
        }
        assert!(
            attempt < 10,
            "the warm-up server went to ERROR {attempt} times"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Sequential creates.
    let mut times = Vec::new();
    for i in 0..sequential {
        let t = Instant::now();
        let id = create(api, &format!("seq-{i}"), &image, &net).await;
        loop {
            match status(api, &id).await.as_str() {
                "ACTIVE" => break,
                "ERROR" => panic!("seq-{i} went to ERROR"),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        delete_all(api, &[id]).await;
    }
    times.sort_by(f64::total_cmp);
    eprintln!("sequential creates (ms, sorted): {times:.0?}");

    // A burst.
    let t = Instant::now();
    let ids: Vec<String> = futures_util::future::join_all(
        (0..burst)
            .map(|i| {
                let (image, net) = (&image, &net);
                async move { create(api, &format!("burst-{i}"), image, net).await }
            })
            .collect::<Vec<_>>(),
    )
    .await;
    let accepted = t.elapsed();
    loop {
        let (_, v) = api
            .call(Method::GET, "compute", "/servers/detail", None)
            .await
            .unwrap();
        let servers = v["servers"].as_array().unwrap();
        if let Some(s) = servers.iter().find(|s| s["status"] == "ERROR") {
            panic!("a burst server went to ERROR: {}", s["fault"]);
        }
        if servers.iter().filter(|s| s["status"] == "ACTIVE").count() >= burst {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "burst not ACTIVE in 900 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_active = t.elapsed();
    Measured {
        times,
        accepted,
        all_active,
        ids,
    }
}

fn print_creates(what: &str, m: &Measured, burst: usize) {
    let t = &m.times;
    println!(
        "{what}: server create -> ACTIVE, {} sequential m1.nano: p50 {:.0} ms, p95 {:.0} ms, min {:.0} ms, max {:.0} ms",
        t.len(),
        percentile(t, 0.5),
        percentile(t, 0.95),
        t[0],
        t[t.len() - 1]
    );
    println!(
        "{what}: {burst} servers at once: accepted in {:.2} s, all ACTIVE in {:.1} s",
        m.accepted.as_secs_f64(),
        m.all_active.as_secs_f64()
    );
}

/// Stops `mica up` however the bench ends.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(180);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("up: bench");
        return;
    }
    let sequential = count("MICA_BENCH_SEQUENTIAL", 20);
    let burst = count("MICA_BENCH_BURST", 50);
    let args: Vec<String> = std::env::args().collect();
    let all = !args.iter().any(|a| a == "all-in-one" || a == "distributed");
    if all || args.iter().any(|a| a == "all-in-one") {
        all_in_one(sequential, burst);
    }
    if all || args.iter().any(|a| a == "distributed") {
        distributed(sequential, burst);
    }
}

fn all_in_one(sequential: usize, burst: usize) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_mica"))
        // 50 m1.nano: 6.4 GiB of guest memory and 50 vCPUs on a host of 2.
        .args(["up", "--nested-memory-mib", "10240"])
        .args(["--agent-set", "resources.cpu_allocation_ratio=32"])
        .arg("--state-dir")
        .arg(&state)
        .arg("--clouds-yaml")
        .arg(state.join("clouds.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(state.join("up.out")).unwrap())
        .stderr(std::fs::File::create(state.join("up.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Guard(child);
    while !std::fs::read_to_string(state.join("up.out"))
        .unwrap_or_default()
        .contains("mica up: ready")
    {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "mica up ended:\n{}",
            std::fs::read_to_string(state.join("up.err")).unwrap_or_default()
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "mica up not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready_in = started.elapsed();
    let compute: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("compute.json")).unwrap())
            .unwrap();
    let jobs = compute["job_folder"].as_str().map(std::path::PathBuf::from);
    let secrets: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("secrets.json")).unwrap())
            .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(child.0.id());

    rt.block_on(async {
        let api = Cloud::login(
            "http://127.0.0.1:5000/v3",
            "admin",
            secrets["admin_password"].as_str().unwrap(),
            "admin",
        )
        .await
        .unwrap();
        let m = measure(&api, sequential, burst).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let busy_rss = rss_kib(child.0.id());
        let (vmm_sum, vmm_n) = vmm_rss(jobs.as_deref());

        println!("mica up ({}): ready in {:.1} s", compute["mode"], ready_in.as_secs_f64());
        print_creates("all-in-one", &m, burst);
        println!("mica up resident memory idle: {:.1} MiB", idle_rss as f64 / 1024.0);
        println!(
            "mica up resident memory with {burst} servers: {:.1} MiB ({:.0} KiB per server)",
            busy_rss as f64 / 1024.0,
            (busy_rss.saturating_sub(idle_rss)) as f64 / burst as f64
        );
        if vmm_n > 0 {
            println!(
                "mica-vmm resident memory: {vmm_n} processes, {:.1} MiB each on average (guest memory touched included)",
                vmm_sum as f64 / 1024.0 / vmm_n as f64
            );
        }
        delete_all(&api, &m.ids).await;
    });
    drop(child);
}

/// The distributed mode: `mica-controller api scheduler conductor` on
/// PostgreSQL and RabbitMQ, `mica init`, and `mica-agent` in the nested test
/// host (release binaries: `cargo build --release -p mica-controller -p
/// mica-agent -p mica-vmm`).
fn distributed(sequential: usize, burst: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dist = Distributed::start(&rt, "warn");
    let bin = |b: &str| mica_tests::artifacts::workspace_binary(b).unwrap();
    let compute = NestedCompute::start(&NestedComputeOptions {
        name: "bench-dist".into(),
        memory_mib: 10240,
        amqp_url: "amqp://mica:mica@127.0.0.1:5672/mica".into(),
        namespace: dist.namespace.clone(),
        image_port: dist.image_port,
        agent_bin: bin("mica-agent"),
        vmm_bin: bin("mica-vmm"),
        kernel: mica_tests::artifacts::GuestKernel::locate()
            .unwrap()
            .vmlinux(),
        // 50 m1.nano: 50 vCPUs on a host of 2.
        agent_sets: [
            "agent.log_level=warn",
            "rpc.queue_expiry_s=600",
            "resources.cpu_allocation_ratio=32",
        ]
        .map(String::from)
        .to_vec(),
        saved_state: None,
        shared_lock: false,
        console_port: None,
        metadata: None,
    })
    .unwrap();

    rt.block_on(async {
        let api = Cloud::login(&dist.identity, "admin", ADMIN_PASSWORD, "admin")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, v) = api
                .call(Method::GET, "compute", "/os-hypervisors/detail", None)
                .await
                .unwrap();
            if v["hypervisors"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["state"] == "up"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "the agent did not register");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let m = measure(&api, sequential, burst).await;
        print_creates("distributed", &m, burst);
        delete_all(&api, &m.ids).await;
    });
    compute.stop(None);
    drop(dist);
}
