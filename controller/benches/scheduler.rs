//! Scheduler and conductor benchmarks (issue 6).
//!
//! ```sh
//! cargo bench -p mica-controller --bench scheduler                          # everything
//! cargo bench -p mica-controller --bench scheduler -- decision sqlite       # one section, one database
//! cargo bench -p mica-controller --bench scheduler -- throughput
//! ```
//!
//! - `decision`: the scheduling decision as the conductor asks for it
//!   (`Scheduler::schedule` of one instance: the host cache's delta read,
//!   placement's cut, filters, weighers, and the checked claim written to
//!   the database), one after another, with 10, 1,000 and 10,000 hosts
//!   registered as agents register them (provider with inventories and
//!   traits, compute service, compute node). Also the first decision of a
//!   fresh scheduler (a full read), decisions without the host cache, and 8
//!   concurrent requests.
//! - `throughput`: 1,000 builds (one request each, cast as fast as
//!   possible) onto 20 simulated hosts with a zero-delay backend, from the
//!   first cast until the last instance is ACTIVE: the roles in this
//!   process on SQLite and the in-process bus, then a `mica-controller
//!   scheduler conductor` process on PostgreSQL and RabbitMQ (and three of
//!   them).

#[path = "../tests/fleet/mod.rs"]
mod fleet;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mica_controller::app::App;
use mica_controller::app::compute::states::vm;
use mica_controller::config::Config;
use mica_controller::db::hosts::{self, NodeReport};
use mica_controller::db::instances as inst;
use mica_controller::db::placement::{self as store, Inventory, Provider};
use mica_controller::db::{Backend, Timestamp};
use mica_controller::scheduler::{Placing, RequestSpec, Scheduler};
use mica_controller::testing::TestCloud;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "scheduler benchmarks: run them with `cargo bench -p mica-controller --bench scheduler`"
        );
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| {
        !args.iter().any(|a| a == "decision" || a == "throughput") || args.iter().any(|a| a == s)
    };
    let backends: Vec<Backend> = if args.iter().any(|a| a == "sqlite") {
        vec![Backend::Sqlite]
    } else if args.iter().any(|a| a == "postgres") {
        vec![Backend::Postgres]
    } else {
        vec![Backend::Postgres, Backend::Sqlite]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if want("decision") {
        println!("\n| database | hosts | what | n | p50 ms | p99 ms | mean ms | max ms |");
        println!("|---|---:|---|---:|---:|---:|---:|---:|");
        for b in &backends {
            for n in [10, 1_000, 10_000] {
                rt.block_on(decisions(*b, n));
            }
        }
    }
    if want("throughput") {
        println!("\n| setup | builds | seconds | builds/s |");
        println!("|---|---:|---:|---:|");
        rt.block_on(throughput_in_process(Backend::Sqlite));
        rt.block_on(throughput_in_process(Backend::Postgres));
        rt.block_on(throughput_processes(1));
        rt.block_on(throughput_processes(3));
    }
}

struct Stats {
    n: usize,
    mean: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len();
    let pick = |q: f64| v[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
    Stats {
        n,
        mean: v.iter().sum::<Duration>() / n as u32,
        p50: pick(0.50),
        p99: pick(0.99),
        max: v[n - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn name(b: Backend) -> &'static str {
    match b {
        Backend::Postgres => "PostgreSQL",
        Backend::Sqlite => "SQLite",
    }
}

fn row(b: Backend, hosts: usize, what: &str, s: &Stats) {
    println!(
        "| {} | {hosts} | {what} | {} | {} | {} | {} | {} |",
        name(b),
        s.n,
        ms(s.p50),
        ms(s.p99),
        ms(s.mean),
        ms(s.max)
    );
}

/// Registers `n` hosts the way the conductor does for agents.
async fn register_hosts(app: &App, n: usize) {
    let inv = |rc: &str, total: i64, ratio: f64| Inventory {
        resource_class: rc.into(),
        total,
        reserved: 0,
        min_unit: 1,
        max_unit: total,
        step_size: 1,
        allocation_ratio: ratio,
    };
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut tx = app.db.begin().await.unwrap();
        for k in chunk {
            let host = format!("host-{k:05}");
            let uuid = uuid::Uuid::new_v4().to_string();
            let now = Timestamp::now();
            store::create_provider(
                &mut *tx,
                &Provider {
                    uuid: uuid.clone(),
                    name: host.clone(),
                    generation: 0,
                    parent_provider_uuid: None,
                    root_provider_uuid: uuid.clone(),
                    created_at: now,
                    updated_at: now,
                },
            )
            .await
            .unwrap();
            store::lock_provider(&mut tx, &uuid, None).await.unwrap();
            store::replace_inventories(
                &mut tx,
                &uuid,
                &[
                    inv("VCPU", 64, 4.0),
                    inv("MEMORY_MB", 262_144, 1.0),
                    inv("DISK_GB", 2000, 1.0),
                ],
            )
            .await
            .unwrap();
            let traits = [
                "COMPUTE_ARCH_X86_64".to_string(),
                "HW_CPU_X86_AVX2".to_string(),
            ]
            .into();
            store::replace_provider_traits(&mut tx, &uuid, &traits)
                .await
                .unwrap();
            hosts::register_service(&mut tx, &host, "nova-compute", "compute", "bench")
                .await
                .unwrap();
            hosts::upsert_compute_node(
                &mut tx,
                &NodeReport {
                    uuid: uuid.clone(),
                    host: host.clone(),
                    hypervisor_hostname: host.clone(),
                    hypervisor_type: "mica".into(),
                    hypervisor_version: 1,
                    host_ip: "127.0.0.1".into(),
                    cpu_info: "{}".into(),
                    vcpus: 64,
                    memory_mb: 262_144,
                    local_gb: 2000,
                    running_vms: 0,
                },
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
}

fn spec() -> RequestSpec {
    RequestSpec {
        project_id: "p".into(),
        user_id: "u".into(),
        resources: [
            ("VCPU".to_string(), 1),
            ("MEMORY_MB".to_string(), 512),
            ("DISK_GB".to_string(), 1),
        ]
        .into(),
        image_properties: [("hw_architecture".to_string(), "x86_64".to_string())].into(),
        ..RequestSpec::default()
    }
}

fn one() -> Vec<Placing> {
    vec![Placing {
        instance_uuid: uuid::Uuid::new_v4().to_string(),
    }]
}

async fn decisions(b: Backend, n: usize) {
    let cloud = TestCloud::start(b, |c| {
        c.database.max_connections = 16;
        c.scheduler.full_refresh_secs = 3600;
    })
    .await;
    let app = cloud.app.clone();
    let t = Instant::now();
    register_hosts(&app, n).await;
    println!(
        "| {} | {n} | (setup: {n} hosts registered in {:.1} s) | | | | | |",
        name(b),
        t.elapsed().as_secs_f64()
    );
    let sched = Scheduler::new(app.clone()).unwrap();
    // The first decision reads every host.
    let t = Instant::now();
    sched
        .schedule(&spec(), &one())
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    row(
        b,
        n,
        "first decision (full read of every host)",
        &stats(vec![t.elapsed()]),
    );
    // Warm-up, then one decision after another.
    for _ in 0..20 {
        sched
            .schedule(&spec(), &one())
            .await
            .unwrap()
            .remove(0)
            .unwrap();
    }
    let count = if n >= 10_000 { 500 } else { 1000 };
    let mut v = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        sched
            .schedule(&spec(), &one())
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        v.push(t.elapsed());
    }
    row(b, n, "decision + claim, one at a time", &stats(v));
    // Eight requests at once (what a busy conductor does).
    let mut v = Vec::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = sched.clone();
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::new();
            for _ in 0..(count / 8) {
                let t = Instant::now();
                s.schedule(&spec(), &one())
                    .await
                    .unwrap()
                    .remove(0)
                    .unwrap();
                v.push(t.elapsed());
            }
            v
        }));
    }
    for t in tasks {
        v.extend(t.await.unwrap());
    }
    let total = v.len();
    let rate = total as f64 / started.elapsed().as_secs_f64();
    row(
        b,
        n,
        &format!("decision + claim, 8 at once ({rate:.0}/s)"),
        &stats(v),
    );
    // Without the host cache: every decision reads every host.
    if n <= 1_000 {
        let mut config: Config = (*app.config).clone();
        config.scheduler.host_state_cache = false;
        let app2 = Arc::new(App::new(app.db.clone(), Arc::new(config)).unwrap());
        let naive = Scheduler::new(app2).unwrap();
        let mut v = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            naive
                .schedule(&spec(), &one())
                .await
                .unwrap()
                .remove(0)
                .unwrap();
            v.push(t.elapsed());
        }
        row(
            b,
            n,
            "without the host cache (full read each time)",
            &stats(v),
        );
    }
    cloud.stop().await;
}

async fn wait_built(f: &fleet::Fleet, total: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let building = inst::list_in_vm_state(f.cloud.app.db.pool(), vm::BUILDING)
            .await
            .unwrap()
            .len();
        let active = inst::list_in_vm_state(f.cloud.app.db.pool(), vm::ACTIVE)
            .await
            .unwrap()
            .len();
        if building == 0 && active >= total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{active} active, {building} building"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds from the first cast until every build is ACTIVE.
async fn cast_all(f: &Arc<fleet::Fleet>, total: usize) -> f64 {
    // The API side: instances written first (not timed), then cast by 8
    // senders as fast as the bus takes them.
    let mut rows = Vec::with_capacity(total);
    for k in 0..total {
        rows.push(f.instance(&format!("b-{k}"), 1, 512, 1));
    }
    let ids: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.uuid.clone(), format!("req-{}", r.uuid)))
        .collect();
    for chunk in rows.chunks(100) {
        let mut tx = f.cloud.app.db.begin().await.unwrap();
        for r in chunk {
            inst::insert_instance(&mut tx, r).await.unwrap();
            inst::start_action(
                &mut tx,
                &r.uuid,
                &format!("req-{}", r.uuid),
                "create",
                &r.project_id,
                &r.user_id,
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for part in ids.chunks(total.div_ceil(8)) {
        let part = part.to_vec();
        let api = f.api.clone();
        tasks.push(tokio::spawn(async move {
            for (uuid, request_id) in part {
                api.cast_method::<mica_rpc::conductor::ScheduleAndBuild>(
                    mica_rpc::Topic::conductor(),
                    &mica_rpc::conductor::ScheduleAndBuildRequest {
                        request_id,
                        instance_uuids: vec![uuid],
                    },
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_built(f, total, Duration::from_secs(600)).await;
    started.elapsed().as_secs_f64()
}

async fn throughput_in_process(b: Backend) {
    let f = Arc::new(
        fleet::Fleet::start(
            b,
            fleet::Bus::Memory,
            &[fleet::Hosts::new("host", 20, 64, 65536, 1000)],
            |c| {
                c.database.max_connections = 16;
            },
        )
        .await,
    );
    let secs = cast_all(&f, 1000).await;
    println!(
        "| roles in-process, {} + memory://, 20 simulated hosts | 1000 | {secs:.1} | {:.0} |",
        name(b),
        1000.0 / secs
    );
    Arc::into_inner(f).unwrap().stop().await;
}

async fn throughput_processes(replicas: usize) {
    let f = Arc::new(
        fleet::Fleet::start_with(
            Backend::Postgres,
            fleet::Bus::Amqp,
            &[fleet::Hosts::new("host", 20, 64, 65536, 1000)],
            |c| {
                c.database.max_connections = 16;
                c.conductor.saga_lease_secs = 20;
                c.compute.service_down_time_secs = 60;
            },
            false,
        )
        .await,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut procs: Vec<fleet::ControllerProcess> = (0..replicas)
        .map(|n| {
            fleet::ControllerProcess::spawn(
                &f,
                dir.path(),
                &format!("replica-{n}"),
                &["scheduler", "conductor"],
                |c| {
                    c.log.level = "warn".into();
                },
            )
        })
        .collect();
    f.wait_for_all_hosts().await;
    let secs = cast_all(&f, 1000).await;
    println!(
        "| {replicas} × `mica-controller scheduler conductor`, PostgreSQL + RabbitMQ, 20 simulated hosts | 1000 | {secs:.1} | {:.0} |",
        1000.0 / secs
    );
    for p in procs.iter_mut() {
        p.terminate();
    }
    Arc::into_inner(f).unwrap().stop().await;
}
