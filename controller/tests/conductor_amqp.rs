//! The scheduler and conductor on PostgreSQL and RabbitMQ (the servers of
//! `make setup`), with simulated agents: builds and actions with the roles
//! in this process, then three `mica-controller scheduler conductor`
//! processes sharing 500 builds onto 20 hosts with room for exactly 400.

mod common;
mod fleet;

use std::collections::BTreeMap;
use std::time::Duration;

use fleet::{Bus, ControllerProcess, Fleet, Hosts};
use mica_controller::app::compute::states::{power, vm};
use mica_controller::db::Backend;
use mica_controller::db::instances as inst;
use mica_rpc::conductor::InstanceAction;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_and_actions_over_rabbitmq() {
    let f = Fleet::start(
        Backend::Postgres,
        Bus::Amqp,
        &[Hosts::new("host", 3, 8, 8192, 100)],
        |_| {},
    )
    .await;
    let uuids = f.create_each(9, 1, 1024, 1).await;
    let rows = f.settle(&uuids, Duration::from_secs(60)).await;
    assert!(rows.iter().all(|r| r.vm_state == vm::ACTIVE), "{rows:?}");
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        *per_host.entry(r.host.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(
        per_host.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3]
    );
    let u = &uuids[0];
    f.action(u, InstanceAction::Stop).await;
    let r = f.idle(u, Duration::from_secs(30)).await;
    assert_eq!(
        (r.vm_state.as_str(), r.power_state),
        (vm::STOPPED, power::SHUTDOWN)
    );
    f.action(u, InstanceAction::Start).await;
    let r = f.idle(u, Duration::from_secs(30)).await;
    assert_eq!(
        (r.vm_state.as_str(), r.power_state),
        (vm::ACTIVE, power::RUNNING)
    );
    f.action(u, InstanceAction::Delete).await;
    let r = f.idle(u, Duration::from_secs(30)).await;
    assert!(r.deleted);
    assert_eq!(f.allocated(&uuids).await.len(), 8);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_500_builds_onto_400_slots() {
    // 20 hosts × 20 instances of (1 vCPU, 1 GiB, 10 GB).
    let f = Fleet::start_with(
        Backend::Postgres,
        Bus::Amqp,
        &[Hosts::new("host", 20, 20, 20 * 1024, 200)],
        |c| {
            c.database.max_connections = 8;
            c.conductor.build_timeout_secs = 300;
            // Heartbeats queue behind the burst on the conductor topic.
            c.compute.service_down_time_secs = 60;
        },
        false,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let logs = fleet::log_dir(dir.path());
    let mut replicas: Vec<ControllerProcess> = (0..3)
        .map(|n| {
            ControllerProcess::spawn(
                &f,
                &logs,
                &format!("replica-{n}"),
                &["scheduler", "conductor"],
                |_| {},
            )
        })
        .collect();
    f.wait_for_all_hosts().await;
    let started = std::time::Instant::now();
    let uuids = f.create_each(500, 1, 1024, 10).await;
    let rows = f.settle(&uuids, Duration::from_secs(420)).await;
    let took = started.elapsed();
    let active: Vec<&inst::InstanceRow> =
        rows.iter().filter(|r| r.vm_state == vm::ACTIVE).collect();
    let errored: Vec<&inst::InstanceRow> =
        rows.iter().filter(|r| r.vm_state == vm::ERROR).collect();
    assert_eq!(
        (active.len(), errored.len()),
        (400, 100),
        "after {took:?}; replica log:\n{}",
        replicas[0].tail()
    );
    f.check_capacity().await;
    let usage = f.usage().await;
    for (host, u) in &usage {
        assert_eq!(u["VCPU"], (20, 20), "{host} exactly full");
    }
    let allocated = f.allocated(&uuids).await;
    assert_eq!(allocated.len(), 400);
    assert!(active.iter().all(|r| allocated.contains(&r.uuid)));
    for r in errored.iter().take(5) {
        let fault = inst::latest_faults(f.cloud.app.db.pool(), std::slice::from_ref(&r.uuid))
            .await
            .unwrap()
            .remove(&r.uuid)
            .unwrap();
        assert!(
            fault.message.starts_with("No valid host was found"),
            "{}",
            fault.message
        );
    }
    // Every replica did some of the work.
    for (n, p) in replicas.iter().enumerate() {
        let log = std::fs::read_to_string(&p.log).unwrap();
        assert!(
            log.contains("saga done"),
            "replica {n} finished no saga:\n{}",
            p.tail()
        );
    }
    println!("500 builds (400 ACTIVE, 100 ERROR) by three replicas in {took:?}");
    for p in replicas.iter_mut() {
        p.terminate();
    }
    f.stop().await;
}
