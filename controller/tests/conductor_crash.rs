//! `kill -9` of the controller process (scheduler and conductor) in the
//! middle of 20 builds on simulated hosts, over PostgreSQL and RabbitMQ;
//! a new process carries on: every instance ends ACTIVE or ERROR, none
//! stays in BUILD, no allocation leaks, no VM is left without its instance.

mod common;
mod fleet;

use std::time::{Duration, Instant};

use fleet::{Bus, ControllerProcess, Fleet, Hosts};
use mica_controller::app::compute::states::vm;
use mica_controller::db::Backend;
use mica_controller::db::sagas;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_the_middle_of_twenty_builds() {
    let f = Fleet::start_with(
        Backend::Postgres,
        Bus::Amqp,
        &[Hosts::new("host", 4, 16, 16384, 200)
            .build_delay(2000)
            .build_jitter(1500)],
        |c| {
            c.conductor.saga_lease_secs = 3;
            // The dead controller reads no heartbeat; hosts must not look
            // down to the next one because of that.
            c.compute.service_down_time_secs = 30;
        },
        false,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let logs = fleet::log_dir(dir.path());
    let mut first =
        ControllerProcess::spawn(&f, &logs, "first", &["scheduler", "conductor"], |_| {});
    f.wait_for_all_hosts().await;
    let uuids = f.create_each(20, 1, 1024, 1).await;

    // Kill it once a few are built and the rest are on their way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (active, building) = loop {
        let mut active = 0;
        let mut building = 0;
        for u in &uuids {
            match f.get(u).await.vm_state.as_str() {
                vm::ACTIVE => active += 1,
                vm::BUILDING => building += 1,
                _ => {}
            }
        }
        if active >= 3 {
            break (active, building);
        }
        assert!(
            Instant::now() < deadline,
            "nothing built:\n{}",
            first.tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.kill9();
    assert!(
        building > 0,
        "{active} active, none left building when killed"
    );
    let in_flight = f.on_hosts();
    println!("killed with {active} ACTIVE, {building} building, {in_flight} VMs on the hosts");

    let mut second =
        ControllerProcess::spawn(&f, &logs, "second", &["scheduler", "conductor"], |_| {});
    let rows = f.settle(&uuids, Duration::from_secs(180)).await;
    let active: Vec<String> = rows
        .iter()
        .filter(|r| r.vm_state == vm::ACTIVE)
        .map(|r| r.uuid.clone())
        .collect();
    for r in &rows {
        assert!(
            r.vm_state == vm::ACTIVE || r.vm_state == vm::ERROR,
            "{} in {}:\n{}",
            r.uuid,
            r.vm_state,
            second.tail()
        );
        assert_eq!(r.task_state, None);
    }
    // Claims: exactly the ACTIVE ones, no host over capacity.
    let allocated = f.allocated(&uuids).await;
    assert_eq!(
        allocated,
        active.iter().cloned().collect(),
        "no leaked allocation"
    );
    f.check_capacity().await;
    let used: i64 = f.usage().await.values().map(|u| u["VCPU"].0).sum();
    assert_eq!(used, active.len() as i64);
    // Hosts: a VM per ACTIVE instance, nothing else (the undos of failed
    // attempts have run).
    let deadline = Instant::now() + Duration::from_secs(20);
    while f.on_hosts() != active.len() {
        assert!(
            Instant::now() < deadline,
            "{} VMs for {} ACTIVE",
            f.on_hosts(),
            active.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every saga finished, the adopted ones included.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts = sagas::count_by_state(f.cloud.app.db.pool()).await.unwrap();
        if counts.iter().all(|(s, _)| s == "done" || s == "failed") {
            break;
        }
        assert!(Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(
        log.contains("adopting a saga"),
        "the second process adopted the first one's sagas"
    );
    println!(
        "after the restart: {} ACTIVE, {} ERROR",
        active.len(),
        rows.len() - active.len()
    );
    second.terminate();
    f.stop().await;
}
