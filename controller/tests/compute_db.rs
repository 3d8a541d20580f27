//! The compute and network datastore functions the conductor relies on,
//! on PostgreSQL and SQLite: instance compare-and-set, task starts, faults,
//! instance actions and events, soft delete, services and nodes,
//! aggregates, and keyset paging of instances.

mod common;

use std::collections::BTreeMap;

use mica_controller::app::compute::lifecycle;
use mica_controller::app::compute::states::{task, vm};
use mica_controller::db::instances::{
    self as inst, Change, Expect, InstanceQuery, InstanceRow, SortKey,
};
use mica_controller::db::{Backend, Timestamp, hosts};
use mica_controller::testing::TestCloud;

fn instance(project: &str, name: &str, created: &str) -> InstanceRow {
    let now: Timestamp = created.parse().unwrap();
    InstanceRow {
        uuid: uuid::Uuid::new_v4().to_string(),
        project_id: project.into(),
        user_id: "u1".into(),
        display_name: name.into(),
        display_description: None,
        hostname: name.into(),
        reservation_id: "r-abcdefgh".into(),
        launch_index: 0,
        image_ref: "img".into(),
        kernel_id: None,
        ramdisk_id: None,
        flavor_id: "1".into(),
        flavor_name: "m1.tiny".into(),
        vcpus: 1,
        memory_mb: 512,
        root_gb: 1,
        ephemeral_gb: 0,
        swap_mb: 0,
        flavor_extra_specs: "{}".into(),
        old_flavor: None,
        new_flavor: None,
        key_name: None,
        key_data: None,
        user_data: None,
        config_drive: String::new(),
        disk_config: "MANUAL".into(),
        access_ip_v4: None,
        access_ip_v6: None,
        root_device_name: None,
        availability_zone: None,
        requested_availability_zone: None,
        forced_host: None,
        forced_node: None,
        scheduler_hints: "{}".into(),
        host: None,
        node: None,
        launched_on: None,
        vmm_id: None,
        vm_state: vm::BUILDING.into(),
        task_state: Some(task::SCHEDULING.into()),
        power_state: 0,
        progress: 0,
        locked: false,
        locked_by: None,
        locked_reason: None,
        launched_at: None,
        terminated_at: None,
        created_at: now,
        updated_at: now,
        deleted: false,
        deleted_at: None,
        generation: 1,
    }
}

async fn instance_lifecycle(backend: Backend) {
    let cloud = TestCloud::start(backend, |_| {}).await;
    let db = &cloud.app.db;
    let i = instance("p1", "vm1", "2025-01-01T00:00:00Z");
    let mut tx = db.begin().await.unwrap();
    inst::insert_instance(&mut tx, &i).await.unwrap();
    tx.commit().await.unwrap();
    let got = inst::get_instance(db.pool(), &i.uuid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, i, "a row reads back as written");

    // The conductor schedules it: expects `scheduling`, sets the host.
    let g = inst::update_instance(
        db.pool(),
        &i.uuid,
        &Expect {
            task_state: Some(Some(task::SCHEDULING.into())),
            ..Default::default()
        },
        &Change {
            host: Some(Some("node-1".into())),
            node: Some(Some("node-1".into())),
            task_state: Some(Some(task::SPAWNING.into())),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(g, 2);
    // A stale writer (old generation) changes nothing.
    let stale = inst::update_instance(
        db.pool(),
        &i.uuid,
        &Expect {
            generation: Some(1),
            ..Default::default()
        },
        &Change {
            vm_state: Some(vm::ERROR.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(stale, None);
    let g = inst::update_instance(
        db.pool(),
        &i.uuid,
        &Expect {
            generation: Some(2),
            vm_states: Some(vec![vm::BUILDING.into()]),
            ..Default::default()
        },
        &Change {
            vm_state: Some(vm::ACTIVE.into()),
            task_state: Some(None),
            power_state: Some(1),
            launched_at: Some(Some(Timestamp::now())),
            vmm_id: Some(Some("vmm-1".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(g, Some(3));
    let on_host = inst::list_instances_on_host(db.pool(), "node-1")
        .await
        .unwrap();
    assert_eq!(on_host.len(), 1);
    assert_eq!(on_host[0].vm_state, "active");
    assert_eq!(on_host[0].task_state, None);
    assert!(on_host[0].launched_at.is_some());

    // Starting a task is a compare-and-set: the second stop loses.
    let first = inst::start_task(
        db.pool(),
        &i.uuid,
        Some(&[vm::ACTIVE, vm::ERROR]),
        &[None],
        Some(task::POWERING_OFF),
    )
    .await
    .unwrap();
    assert!(first.is_some());
    let second = inst::start_task(
        db.pool(),
        &i.uuid,
        Some(&[vm::ACTIVE, vm::ERROR]),
        &[None],
        Some(task::POWERING_OFF),
    )
    .await
    .unwrap();
    assert_eq!(second, None);
    // Hard reboot may interrupt some tasks, not powering-off.
    let reboot = inst::start_task(
        db.pool(),
        &i.uuid,
        Some(&[vm::ACTIVE]),
        &task::ALLOW_REBOOT,
        Some(task::REBOOTING_HARD),
    )
    .await
    .unwrap();
    assert_eq!(reboot, None);

    // Actions and events.
    let mut conn = db.pool().acquire().await.unwrap();
    let a = inst::start_action(&mut conn, &i.uuid, "req-1", "stop", "p1", "u1")
        .await
        .unwrap();
    let again = inst::start_action(&mut conn, &i.uuid, "req-1", "stop", "p1", "u1")
        .await
        .unwrap();
    assert_eq!(a, again, "idempotent per request");
    inst::start_event(
        &mut conn,
        &i.uuid,
        "req-1",
        "compute_stop_instance",
        Some("node-1"),
    )
    .await
    .unwrap();
    assert!(
        inst::finish_event(
            &mut conn,
            &i.uuid,
            "req-1",
            "compute_stop_instance",
            Some("node-1"),
            false,
            Some("boom"),
            Some("trace")
        )
        .await
        .unwrap()
    );
    assert!(
        !inst::finish_event(&mut conn, &i.uuid, "req-none", "x", None, true, None, None)
            .await
            .unwrap()
    );
    let acts = inst::list_actions(&mut *conn, &i.uuid, None, None, None, None)
        .await
        .unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].message.as_deref(), Some("Error"));
    let evs = inst::list_events(&mut *conn, a).await.unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].result.as_deref(), Some("Error"));
    assert_eq!(evs[0].details.as_deref(), Some("boom"));
    assert!(evs[0].finish_time.is_some());

    // Faults: the newest wins.
    inst::record_fault(&mut *conn, &i.uuid, 500, "first", "", None)
        .await
        .unwrap();
    inst::record_fault(
        &mut *conn,
        &i.uuid,
        500,
        "No valid host was found.",
        "details",
        Some("node-1"),
    )
    .await
    .unwrap();
    let f = inst::latest_faults(&mut *conn, std::slice::from_ref(&i.uuid))
        .await
        .unwrap();
    assert_eq!(f[&i.uuid].message, "No valid host was found.");
    drop(conn);

    // Soft delete: gone from live reads, readable with get_instance_any.
    assert!(
        lifecycle::finish_delete(&cloud.app, &i.uuid, &Expect::default())
            .await
            .unwrap()
    );
    assert!(
        !lifecycle::finish_delete(&cloud.app, &i.uuid, &Expect::default())
            .await
            .unwrap()
    );
    assert!(
        inst::get_instance(db.pool(), &i.uuid)
            .await
            .unwrap()
            .is_none()
    );
    let dead = inst::get_instance_any(db.pool(), &i.uuid)
        .await
        .unwrap()
        .unwrap();
    assert!(dead.deleted);
    assert_eq!(dead.vm_state, "deleted");
    assert!(dead.deleted_at.is_some());
    assert!(
        inst::update_instance(
            db.pool(),
            &i.uuid,
            &Expect::default(),
            &Change {
                progress: Some(5),
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .is_none(),
        "a deleted instance can't be changed"
    );
    cloud.stop().await;
}

async fn instance_paging(backend: Backend) {
    let cloud = TestCloud::start(backend, |_| {}).await;
    let db = &cloud.app.db;
    let mut all = Vec::new();
    let mut tx = db.begin().await.unwrap();
    for n in 0..23 {
        // Three share each creation second: ties are broken by uuid.
        let i = instance(
            "p1",
            &format!("vm{n:02}"),
            &format!("2025-01-01T00:00:{:02}Z", n / 3),
        );
        inst::insert_instance(&mut tx, &i).await.unwrap();
        all.push(i);
    }
    inst::insert_instance(&mut tx, &instance("p2", "other", "2025-01-01T00:00:00Z"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    all.sort_by(|a, b| (b.created_at, &b.uuid).cmp(&(a.created_at, &a.uuid)));
    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let page = inst::list_instances(
            db.pool(),
            backend,
            &InstanceQuery {
                project_id: Some("p1".into()),
                marker: marker.clone(),
                limit: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        if page.is_empty() {
            break;
        }
        marker = page.last().cloned();
        seen.extend(page.into_iter().map(|i| i.uuid));
    }
    let want: Vec<String> = all.iter().map(|i| i.uuid.clone()).collect();
    assert_eq!(
        seen, want,
        "default order: created_at desc, uuid desc; no gaps, no repeats"
    );
    // By name ascending, a filter on the project.
    let by_name = inst::list_instances(
        db.pool(),
        backend,
        &InstanceQuery {
            project_id: Some("p1".into()),
            sort: vec![(SortKey::DisplayName, true)],
            limit: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let names: Vec<&str> = by_name.iter().map(|i| i.display_name.as_str()).collect();
    assert_eq!(names, ["vm00", "vm01", "vm02"]);
    cloud.stop().await;
}

async fn services_nodes_aggregates(backend: Backend) {
    let cloud = TestCloud::start(backend, |_| {}).await;
    let db = &cloud.app.db;
    let mut conn = db.pool().acquire().await.unwrap();
    let s = hosts::register_service(&mut conn, "node-1", "nova-compute", "compute", "0.1.0")
        .await
        .unwrap();
    let again = hosts::register_service(&mut conn, "node-1", "nova-compute", "compute", "0.2.0")
        .await
        .unwrap();
    assert_eq!(s.id, again.id);
    assert_eq!(s.uuid, again.uuid);
    assert_eq!(again.version, "0.2.0");
    assert!(
        hosts::heartbeat(&mut *conn, "node-1", "nova-compute")
            .await
            .unwrap()
    );
    assert!(
        !hosts::heartbeat(&mut *conn, "nope", "nova-compute")
            .await
            .unwrap()
    );
    let n = hosts::upsert_compute_node(
        &mut conn,
        &hosts::NodeReport {
            uuid: uuid::Uuid::new_v4().to_string(),
            host: "node-1".into(),
            hypervisor_hostname: "node-1".into(),
            hypervisor_type: "mica".into(),
            vcpus: 8,
            memory_mb: 16384,
            local_gb: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(n.service_id, Some(s.id));
    assert_eq!(
        hosts::get_node(&mut *conn, "node-1")
            .await
            .unwrap()
            .unwrap()
            .id,
        n.id
    );
    assert_eq!(
        hosts::get_node(&mut *conn, &n.uuid)
            .await
            .unwrap()
            .unwrap()
            .id,
        n.id
    );
    assert_eq!(
        hosts::list_nodes(&mut *conn, Some("ode"), None, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        hosts::list_nodes(&mut *conn, Some("%"), None, None)
            .await
            .unwrap()
            .len(),
        0
    );

    let id = hosts::insert_aggregate(&mut *conn, &uuid::Uuid::new_v4().to_string(), "agg1")
        .await
        .unwrap();
    hosts::add_aggregate_host(&mut *conn, id, "node-1")
        .await
        .unwrap();
    assert!(
        hosts::add_aggregate_host(&mut *conn, id, "node-1")
            .await
            .unwrap_err()
            .kind
            .status()
            == 409
    );
    let mut meta = BTreeMap::new();
    meta.insert("availability_zone".to_owned(), Some("az1".to_owned()));
    meta.insert("ssd".to_owned(), Some("true".to_owned()));
    hosts::set_aggregate_metadata(&mut conn, id, &meta)
        .await
        .unwrap();
    assert_eq!(
        hosts::host_zones(&mut *conn).await.unwrap()["node-1"],
        "az1"
    );
    let a = hosts::get_aggregate(&mut conn, &id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.availability_zone(), Some("az1"));
    assert_eq!(a.hosts, ["node-1"]);
    drop(conn);
    cloud.stop().await;
}

both_databases!(
    instance_lifecycle,
    instance_paging,
    services_nodes_aggregates
);
