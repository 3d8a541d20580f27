//! The scheduler and conductor roles with simulated agents on the
//! in-process bus, on PostgreSQL and SQLite: builds, spreading and forcing,
//! server groups, rescheduling on alternates, NoValidHost faults, instance
//! actions and their events, deletes, timeouts and lost hosts, power-state
//! sync, stale task states, and the generic saga tests on the build saga.

mod common;
mod fleet;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleet::{Bus, Fleet, Hosts};
use mica_controller::app::compute::states::{power, task, vm};
use mica_controller::db::instances as inst;
use mica_controller::db::sagas;
use mica_controller::db::{Backend, hosts, placement, server_groups};
use mica_rpc::conductor::InstanceAction;

const T: Duration = Duration::from_secs(60);

fn hosts_of(rows: &[inst::InstanceRow]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        if let Some(h) = &r.host {
            *m.entry(h.clone()).or_default() += 1;
        }
    }
    m
}

async fn fault_of(f: &Fleet, uuid: &str) -> inst::Fault {
    inst::latest_faults(f.cloud.app.db.pool(), &[uuid.to_string()])
        .await
        .unwrap()
        .remove(uuid)
        .expect("a fault")
}

async fn events_of(f: &Fleet, uuid: &str) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for a in inst::list_actions(f.cloud.app.db.pool(), uuid, None, None, None, None)
        .await
        .unwrap()
    {
        for e in inst::list_events(f.cloud.app.db.pool(), a.id)
            .await
            .unwrap()
        {
            out.push((a.action.clone(), e.event.clone(), e.result.clone()));
        }
    }
    out
}

async fn builds_go_active_and_spread(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 3, 8, 8192, 100)],
        |_| {},
    )
    .await;
    let uuids = f.create_each(6, 1, 1024, 1).await;
    let rows = f.settle(&uuids, T).await;
    for r in &rows {
        assert_eq!(r.vm_state, vm::ACTIVE, "{}", r.uuid);
        assert_eq!(r.task_state, None);
        assert_eq!(r.power_state, power::RUNNING);
        assert!(r.vmm_id.is_some());
        assert!(r.launched_at.is_some());
        assert_eq!(r.availability_zone.as_deref(), Some("nova"));
    }
    let per_host = hosts_of(&rows);
    assert_eq!(
        per_host.len(),
        3,
        "spread over the three hosts: {per_host:?}"
    );
    assert!(per_host.values().all(|n| *n == 2), "{per_host:?}");
    assert_eq!(f.allocated(&uuids).await.len(), 6);
    assert_eq!(f.on_hosts(), 6);
    let usage = f.usage().await;
    assert!(
        usage.values().all(|u| u["MEMORY_MB"].0 == 2048),
        "{usage:?}"
    );
    // The create action and its events.
    let ev = events_of(&f, &uuids[0]).await;
    assert!(
        ev.contains(&(
            "create".into(),
            "conductor_schedule_and_build_instances".into(),
            Some("Success".into())
        )),
        "{ev:?}"
    );
    assert!(
        ev.contains(&(
            "create".into(),
            "compute_build_and_run_instance".into(),
            Some("Success".into())
        )),
        "{ev:?}"
    );
    // Every build saga finished.
    let counts = sagas::count_by_state(f.cloud.app.db.pool()).await.unwrap();
    assert_eq!(counts, vec![("done".to_string(), 6)]);
    f.stop().await;
}

async fn a_multi_create_spreads_in_one_request(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 4, 8, 8192, 100)],
        |_| {},
    )
    .await;
    let rows: Vec<_> = (0..4)
        .map(|n| f.instance(&format!("m-{n}"), 2, 2048, 1))
        .collect();
    let uuids = f.create(&rows).await;
    let rows = f.settle(&uuids, T).await;
    assert!(rows.iter().all(|r| r.vm_state == vm::ACTIVE));
    assert_eq!(hosts_of(&rows).len(), 4, "one per host");
    f.stop().await;
}

async fn a_multi_create_packs_with_negative_weights(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 4, 8, 8192, 100)],
        |c| {
            c.filter_scheduler.ram_weight_multiplier = -1.0;
            c.filter_scheduler.cpu_weight_multiplier = -1.0;
            c.filter_scheduler.disk_weight_multiplier = -1.0;
        },
    )
    .await;
    let rows: Vec<_> = (0..6)
        .map(|n| f.instance(&format!("m-{n}"), 2, 2048, 1))
        .collect();
    let uuids = f.create(&rows).await;
    let rows = f.settle(&uuids, T).await;
    assert!(rows.iter().all(|r| r.vm_state == vm::ACTIVE));
    let mut counts: Vec<usize> = hosts_of(&rows).values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![2, 4], "packed: a full host, then the next");
    f.stop().await;
}

async fn forcing_a_host(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 3, 8, 8192, 100)],
        |_| {},
    )
    .await;
    // A disabled host can still be forced (filters are skipped)…
    let svc = hosts::list_services(f.cloud.app.db.pool(), Some("host-2"), None)
        .await
        .unwrap()
        .remove(0);
    hosts::set_disabled(f.cloud.app.db.pool(), svc.id, true, Some("maintenance"))
        .await
        .unwrap();
    let mut a = f.instance("forced", 1, 512, 1);
    a.forced_host = Some("host-2".into());
    let mut b = f.instance("hinted", 1, 512, 1);
    b.scheduler_hints = r#"{"force_host": "host-2"}"#.into();
    let c = f.instance("free", 1, 512, 1);
    let mut uuids = f.create(&[a]).await;
    uuids.extend(f.create(&[b]).await);
    uuids.extend(f.create(&[c]).await);
    let rows = f.settle(&uuids, T).await;
    assert_eq!(rows[0].host.as_deref(), Some("host-2"));
    assert_eq!(rows[1].host.as_deref(), Some("host-2"));
    assert_ne!(
        rows[2].host.as_deref(),
        Some("host-2"),
        "…but not chosen when not forced"
    );
    // …but never beyond its capacity.
    let mut big = f.instance("too-big", 8, 8192, 1);
    big.forced_host = Some("host-2".into());
    let uuids = f.create(&[big]).await;
    let rows = f.settle(&uuids, T).await;
    assert_eq!(rows[0].vm_state, vm::ERROR);
    assert!(
        fault_of(&f, &uuids[0])
            .await
            .message
            .starts_with("No valid host was found")
    );
    f.stop().await;
}

async fn anti_affinity_three_hosts_four_servers(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 3, 16, 16384, 100)],
        |_| {},
    )
    .await;
    let db = &f.cloud.app.db;
    let group = server_groups::GroupRow {
        id: 0,
        uuid: uuid::Uuid::new_v4().to_string(),
        project_id: f.project_id.clone(),
        user_id: f.user_id.clone(),
        name: "spread".into(),
        policy: "anti-affinity".into(),
        rules: "{}".into(),
        created_at: mica_controller::db::Timestamp::now(),
    };
    let gid = server_groups::insert_group(db.pool(), &group)
        .await
        .unwrap();
    let mut uuids = Vec::new();
    for n in 0..4 {
        let row = f.instance(&format!("aa-{n}"), 1, 512, 1);
        // The API adds the member with the instance, then hands it over.
        let request_id = format!("req-aa-{n}");
        f.insert(std::slice::from_ref(&row), &request_id).await;
        server_groups::add_member(db.pool(), gid, &row.uuid)
            .await
            .unwrap();
        f.api
            .cast_method::<mica_rpc::conductor::ScheduleAndBuild>(
                mica_rpc::Topic::conductor(),
                &mica_rpc::conductor::ScheduleAndBuildRequest {
                    request_id,
                    instance_uuids: vec![row.uuid.clone()],
                },
            )
            .await
            .unwrap();
        uuids.push(row.uuid);
    }
    let rows = f.settle(&uuids, T).await;
    let active: Vec<_> = rows.iter().filter(|r| r.vm_state == vm::ACTIVE).collect();
    let errored: Vec<_> = rows.iter().filter(|r| r.vm_state == vm::ERROR).collect();
    assert_eq!(active.len(), 3, "{rows:?}");
    assert_eq!(errored.len(), 1);
    let placed: BTreeSet<_> = active.iter().map(|r| r.host.clone().unwrap()).collect();
    assert_eq!(placed.len(), 3, "three different hosts");
    let fault = fault_of(&f, &errored[0].uuid).await;
    assert!(
        fault.message.starts_with("No valid host was found"),
        "{}",
        fault.message
    );
    assert!(
        fault.details.contains("ServerGroupAntiAffinityFilter: 0"),
        "{}",
        fault.details
    );
    assert_eq!(
        f.allocated(&uuids).await.len(),
        3,
        "the failed one holds nothing"
    );
    f.stop().await;
}

async fn a_failed_build_is_rebuilt_on_an_alternate(backend: Backend) {
    // The failing host is the roomiest, so the weighers pick it first.
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[
            Hosts::new("bad", 1, 64, 65536, 1000).failing(),
            Hosts::new("good", 1, 8, 8192, 100),
        ],
        |_| {},
    )
    .await;
    let uuids = f.create_each(1, 1, 1024, 1).await;
    let rows = f.settle(&uuids, T).await;
    assert_eq!(rows[0].vm_state, vm::ACTIVE);
    assert_eq!(rows[0].host.as_deref(), Some("good-0"));
    assert_eq!(f.allocated(&uuids).await.len(), 1);
    let usage = f.usage().await;
    assert_eq!(
        usage["bad-0"]["MEMORY_MB"].0, 0,
        "nothing left on the failed host"
    );
    assert_eq!(f.agent("bad-0").backend.instance_count(), 0);
    let ev = events_of(&f, &uuids[0]).await;
    let builds: Vec<_> = ev
        .iter()
        .filter(|e| e.1 == "compute_build_and_run_instance")
        .collect();
    assert_eq!(builds.len(), 2, "{ev:?}");
    assert!(builds.iter().any(|e| e.2.as_deref() == Some("Error")));
    assert!(builds.iter().any(|e| e.2.as_deref() == Some("Success")));
    let failed: Vec<(String, i64)> =
        mica_controller::db::scheduler::failed_builds(f.cloud.app.db.pool())
            .await
            .unwrap();
    assert_eq!(failed, vec![("bad-0".to_string(), 1)]);
    // The next build avoids the failing host (BuildFailureWeigher).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let uuids = f.create_each(1, 1, 1024, 1).await;
    let rows = f.settle(&uuids, T).await;
    assert_eq!(rows[0].host.as_deref(), Some("good-0"));
    let ev = events_of(&f, &uuids[0]).await;
    assert_eq!(
        ev.iter()
            .filter(|e| e.1 == "compute_build_and_run_instance")
            .count(),
        1
    );
    f.stop().await;
}

async fn every_host_failing_ends_in_error_with_nothing_left(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("bad", 4, 8, 8192, 100).failing()],
        |_| {},
    )
    .await;
    let uuids = f.create_each(2, 1, 1024, 1).await;
    let rows = f.settle(&uuids, T).await;
    for r in &rows {
        assert_eq!(r.vm_state, vm::ERROR);
        assert_eq!(r.task_state, None);
        let fault = fault_of(&f, &r.uuid).await;
        assert!(
            fault.message.starts_with("No valid host was found"),
            "{}",
            fault.message
        );
        assert!(
            fault
                .message
                .contains("Exceeded maximum number of retries (3)"),
            "{}",
            fault.message
        );
        assert_eq!(
            fault.details.lines().count(),
            3,
            "three attempts: {}",
            fault.details
        );
        assert!(
            fault.details.contains("simulated failure"),
            "{}",
            fault.details
        );
    }
    assert!(f.allocated(&uuids).await.is_empty(), "no allocation left");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.on_hosts(), 0, "nothing left on the hosts");
    let counts = sagas::count_by_state(f.cloud.app.db.pool()).await.unwrap();
    assert_eq!(
        counts,
        vec![("failed".to_string(), 6)],
        "three attempts each"
    );
    f.stop().await;
}

async fn no_host_at_all(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("small", 2, 2, 2048, 10)],
        |_| {},
    )
    .await;
    let uuids = f.create_each(1, 4, 1024, 1).await;
    let rows = f.settle(&uuids, T).await;
    assert_eq!(rows[0].vm_state, vm::ERROR);
    let fault = fault_of(&f, &uuids[0]).await;
    assert_eq!(fault.code, 500);
    assert_eq!(
        fault.message,
        "No valid host was found. There are not enough hosts available."
    );
    assert!(fault.details.contains("placement: 0"), "{}", fault.details);
    let ev = events_of(&f, &uuids[0]).await;
    assert!(
        ev.contains(&(
            "create".into(),
            "conductor_schedule_and_build_instances".into(),
            Some("Error".into())
        )),
        "{ev:?}"
    );
    f.stop().await;
}

async fn instance_actions_reach_their_states(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 2, 8, 8192, 100)],
        |_| {},
    )
    .await;
    let uuid = f.create_each(1, 1, 512, 1).await.remove(0);
    let first = f.settle(std::slice::from_ref(&uuid), T).await.remove(0);
    let host = first.host.clone().unwrap();
    let steps: Vec<(InstanceAction, &str, i64)> = vec![
        (InstanceAction::Stop, vm::STOPPED, power::SHUTDOWN),
        (InstanceAction::Start, vm::ACTIVE, power::RUNNING),
        (
            InstanceAction::Reboot { hard: false },
            vm::ACTIVE,
            power::RUNNING,
        ),
        (
            InstanceAction::Reboot { hard: true },
            vm::ACTIVE,
            power::RUNNING,
        ),
        (InstanceAction::Pause, vm::PAUSED, power::PAUSED),
        (InstanceAction::Unpause, vm::ACTIVE, power::RUNNING),
        (InstanceAction::Suspend, vm::SUSPENDED, power::SUSPENDED),
        (InstanceAction::Resume, vm::ACTIVE, power::RUNNING),
    ];
    let mut vmm = first.vmm_id.clone();
    for (action, state, power) in steps {
        let name = format!("{action:?}");
        let req = f.action(&uuid, action.clone()).await;
        let r = f.idle(&uuid, T).await;
        assert_eq!(
            (r.vm_state.as_str(), r.power_state),
            (state, power),
            "after {name}"
        );
        assert_eq!(r.host.as_deref(), Some(host.as_str()));
        match action {
            InstanceAction::Stop => assert_eq!(r.vmm_id, None, "a stopped instance has no VMM"),
            InstanceAction::Start | InstanceAction::Reboot { hard: true } => {
                assert!(
                    r.vmm_id.is_some() && r.vmm_id != vmm,
                    "a new VMM after {name}"
                )
            }
            _ => assert_eq!(r.vmm_id, vmm, "same VMM after {name}"),
        }
        vmm = r.vmm_id.clone();
        let a = inst::get_action(f.cloud.app.db.pool(), &uuid, &req)
            .await
            .unwrap()
            .unwrap();
        assert!(a.finish_time.is_some(), "{name} finished");
        let events = inst::list_events(f.cloud.app.db.pool(), a.id)
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "{name}: {events:?}");
        assert_eq!(events[0].result.as_deref(), Some("Success"), "{name}");
        assert_eq!(events[0].host.as_deref(), Some(host.as_str()));
    }
    // Delete: gone from the host, from placement and from the listings.
    f.action(&uuid, InstanceAction::Delete).await;
    let r = f.idle(&uuid, T).await;
    assert!(r.deleted, "{r:?}");
    assert_eq!(r.vm_state, vm::DELETED);
    assert!(f.allocated(std::slice::from_ref(&uuid)).await.is_empty());
    assert_eq!(f.on_hosts(), 0);
    f.stop().await;
}

async fn an_action_on_a_lost_host_clears_its_task(backend: Backend) {
    let mut f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 1, 8, 8192, 100)],
        |_| {},
    )
    .await;
    let uuid = f.create_each(1, 1, 512, 1).await.remove(0);
    f.settle(std::slice::from_ref(&uuid), T).await;
    // The agent dies: no heartbeats, nothing served.
    let a = f.agents.remove(0);
    a.agent.shutdown().await;
    let req = f.action(&uuid, InstanceAction::Stop).await;
    let r = f.idle(&uuid, Duration::from_secs(30)).await;
    assert_eq!(r.vm_state, vm::ACTIVE, "nothing was stopped");
    assert_eq!(r.task_state, None, "never stuck in powering-off");
    // The action records its error once the saga has unwound.
    let mut action = inst::get_action(f.cloud.app.db.pool(), &uuid, &req)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..100 {
        if action.message.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        action = inst::get_action(f.cloud.app.db.pool(), &uuid, &req)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(action.message.as_deref(), Some("Error"));
    let events = inst::list_events(f.cloud.app.db.pool(), action.id)
        .await
        .unwrap();
    assert!(
        events[0]
            .details
            .as_deref()
            .unwrap_or_default()
            .contains("is down"),
        "{events:?}"
    );
    // Deleting an instance whose host is down deletes it locally.
    f.action(&uuid, InstanceAction::Delete).await;
    let r = f.idle(&uuid, Duration::from_secs(30)).await;
    assert!(r.deleted);
    assert!(f.allocated(std::slice::from_ref(&uuid)).await.is_empty());
    f.stop().await;
}

async fn an_action_that_times_out_clears_its_task(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("slow", 1, 8, 8192, 100).action_delay(6_000)],
        |c| c.conductor.action_timeout_secs = 1,
    )
    .await;
    let uuid = f.create_each(1, 1, 512, 1).await.remove(0);
    f.settle(std::slice::from_ref(&uuid), T).await;
    let started = std::time::Instant::now();
    f.action(&uuid, InstanceAction::Pause).await;
    let r = f.idle(&uuid, Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after the timeout"
    );
    assert_eq!(r.vm_state, vm::ACTIVE);
    assert_eq!(r.task_state, None);
    f.stop().await;
}

async fn power_state_sync_stops_a_dead_instance(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 1, 8, 8192, 100)],
        |_| {},
    )
    .await;
    let uuid = f.create_each(1, 1, 512, 1).await.remove(0);
    f.settle(std::slice::from_ref(&uuid), T).await;
    assert!(f.agents[0].backend.crash(&uuid));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = f.get(&uuid).await;
        if r.vm_state == vm::STOPPED {
            assert_eq!(r.power_state, power::SHUTDOWN);
            assert_eq!(r.vmm_id, None);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {}", r.vm_state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It can be started again.
    f.action(&uuid, InstanceAction::Start).await;
    let r = f.idle(&uuid, T).await;
    assert_eq!(r.vm_state, vm::ACTIVE);
    f.stop().await;
}

async fn stale_task_states_are_reset(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 1, 8, 8192, 100)],
        |c| {
            c.conductor.stale_task_state_secs = 0;
        },
    )
    .await;
    let uuid = f.create_each(1, 1, 512, 1).await.remove(0);
    f.settle(std::slice::from_ref(&uuid), T).await;
    let db = &f.cloud.app.db;
    // A task state no saga is behind (its cast was lost, say).
    inst::start_task(db.pool(), &uuid, None, &[None], Some(task::POWERING_OFF))
        .await
        .unwrap()
        .unwrap();
    // An instance stuck in BUILD with a claim and no saga.
    let stuck = f.instance("stuck", 1, 512, 1);
    f.insert(std::slice::from_ref(&stuck), "req-stuck").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let engine = f
        .workers
        .as_ref()
        .unwrap()
        .conductor()
        .unwrap()
        .engine()
        .clone();
    let n = mica_controller::conductor::periodic::reset_stale_tasks(&engine)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let r = f.get(&uuid).await;
    assert_eq!(
        (r.vm_state.as_str(), r.task_state.clone()),
        (vm::ACTIVE, None)
    );
    let s = f.get(&stuck.uuid).await;
    assert_eq!(
        (s.vm_state.as_str(), s.task_state.clone()),
        (vm::ERROR, None)
    );
    assert!(
        fault_of(&f, &stuck.uuid)
            .await
            .message
            .contains("did not complete")
    );
    // A task a saga is working on (or has finished) is left alone. (Wait
    // for the stop's saga first: before the cast reaches the conductor the
    // task has no saga behind it and would rightly be reset.)
    let before = sagas::sagas_of_target(db.pool(), &uuid)
        .await
        .unwrap()
        .len();
    f.action(&uuid, InstanceAction::Stop).await;
    let deadline = std::time::Instant::now() + T;
    while sagas::sagas_of_target(db.pool(), &uuid)
        .await
        .unwrap()
        .len()
        == before
    {
        assert!(std::time::Instant::now() < deadline, "no saga for the stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = mica_controller::conductor::periodic::reset_stale_tasks(&engine)
        .await
        .unwrap();
    assert_eq!(n, 0);
    f.idle(&uuid, T).await;
    f.stop().await;
}

async fn agents_register_and_report_their_providers(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 2, 8, 8192, 100)],
        |_| {},
    )
    .await;
    let db = &f.cloud.app.db;
    let services = hosts::list_services(db.pool(), None, None).await.unwrap();
    assert_eq!(services.len(), 2);
    assert!(
        services
            .iter()
            .all(|s| s.binary_name == "nova-compute" && s.topic == "compute")
    );
    let p = placement::find_provider(db.pool(), "host-0")
        .await
        .unwrap()
        .unwrap();
    let inv = placement::inventories(db.pool(), &p.uuid).await.unwrap();
    let vcpu = inv.iter().find(|i| i.resource_class == "VCPU").unwrap();
    assert_eq!((vcpu.total, vcpu.allocation_ratio), (8, 1.0));
    let traits = placement::provider_traits(db.pool(), &p.uuid)
        .await
        .unwrap();
    assert!(
        traits.contains(&"COMPUTE_ARCH_X86_64".to_string()),
        "{traits:?}"
    );
    let nodes = hosts::nodes_of_host(db.pool(), "host-0").await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].uuid, p.uuid, "the node is the provider");
    assert_eq!(nodes[0].hypervisor_type, "mica-simulated");
    assert_eq!(
        nodes[0].service_id,
        Some(services.iter().find(|s| s.host == "host-0").unwrap().id)
    );
    // Reports that change nothing leave the generation alone.
    let g = p.generation;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let p2 = placement::find_provider(db.pool(), "host-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p2.generation, g, "an unchanged inventory is not rewritten");
    // An operator's custom trait survives the agent's reports.
    placement::create_trait(db.pool(), "CUSTOM_GOLD")
        .await
        .unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    let mut t: BTreeSet<String> = traits.into_iter().collect();
    t.insert("CUSTOM_GOLD".into());
    placement::replace_provider_traits(&mut conn, &p.uuid, &t)
        .await
        .unwrap();
    drop(conn);
    f.agents[0].agent.resources_changed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let traits = placement::provider_traits(db.pool(), &p.uuid)
        .await
        .unwrap();
    assert!(traits.contains(&"CUSTOM_GOLD".to_string()));
    // Heartbeats move `updated_at`.
    let before = services[0].updated_at;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = hosts::list_services(db.pool(), Some(&services[0].host), None)
        .await
        .unwrap()[0]
        .updated_at;
    assert!(after > before);
    let beats = hosts::list_services(db.pool(), Some(&services[0].host), None)
        .await
        .unwrap()[0]
        .report_count;
    assert!(beats > services[0].report_count, "heartbeats counted");
    f.stop().await;
}

async fn build_saga_steps_run_twice_give_the_same_result(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 2, 8, 8192, 100)],
        |_| {},
    )
    .await;
    f.hooks.repeat.store(true, Ordering::Relaxed);
    let uuids = f.create_each(2, 1, 1024, 1).await;
    let rows = f.settle(&uuids, T).await;
    assert!(rows.iter().all(|r| r.vm_state == vm::ACTIVE), "{rows:?}");
    let mismatches = f.hooks.mismatches();
    assert!(
        mismatches.iter().all(|m| m.starts_with("build/ids:")),
        "only the id step may differ: {mismatches:?}"
    );
    for step in ["schedule", "assign", "cast", "wait", "active"] {
        let runs = f
            .hooks
            .trace()
            .iter()
            .filter(|t| **t == format!("build/{step}"))
            .count();
        assert_eq!(runs, 4, "{step} ran twice per instance");
    }
    assert_eq!(f.allocated(&uuids).await.len(), 2);
    let usage = f.usage().await;
    let total: i64 = usage.values().map(|u| u["MEMORY_MB"].0).sum();
    assert_eq!(total, 2048, "one claim per instance: {usage:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.on_hosts(), 2, "one VM per instance");
    f.stop().await;
}

async fn a_failure_at_each_build_step_leaves_nothing(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 2, 8, 8192, 100)],
        |_| {},
    )
    .await;
    for step in ["ids", "schedule", "assign", "cast", "wait", "active"] {
        *f.hooks.fail_at.lock().unwrap() = Some(("build".into(), step.into()));
        let uuids = f.create_each(1, 1, 1024, 1).await;
        let rows = f.settle(&uuids, T).await;
        assert_eq!(rows[0].vm_state, vm::ERROR, "failing at {step}");
        assert_eq!(rows[0].task_state, None);
        assert_eq!(rows[0].host, None, "failing at {step}: no host kept");
        assert!(
            f.allocated(&uuids).await.is_empty(),
            "failing at {step}: no allocation"
        );
        let fault = fault_of(&f, &uuids[0]).await;
        assert_eq!(fault.message, "An injected failure.");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(f.on_hosts(), 0, "failing at {step}: nothing on the hosts");
        let all = f.usage().await;
        assert!(
            all.values().all(|u| u.values().all(|(used, _)| *used == 0)),
            "{all:?}"
        );
    }
    f.stop().await;
}

both_databases!(
    builds_go_active_and_spread,
    a_multi_create_spreads_in_one_request,
    a_multi_create_packs_with_negative_weights,
    forcing_a_host,
    anti_affinity_three_hosts_four_servers,
    a_failed_build_is_rebuilt_on_an_alternate,
    every_host_failing_ends_in_error_with_nothing_left,
    no_host_at_all,
    instance_actions_reach_their_states,
    an_action_on_a_lost_host_clears_its_task,
    an_action_that_times_out_clears_its_task,
    power_state_sync_stops_a_dead_instance,
    stale_task_states_are_reset,
    agents_register_and_report_their_providers,
    build_saga_steps_run_twice_give_the_same_result,
    a_failure_at_each_build_step_leaves_nothing,
);
