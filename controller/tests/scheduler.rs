//! The scheduler against the database (PostgreSQL and SQLite), without
//! agents: several scheduler replicas (each with its own host cache)
//! claiming at once never overcommit a host nor break a server group's
//! policy; a replayed decision returns the same host; alternates are
//! claimed with a capacity check; a stale cache costs a retry, not a
//! wrong answer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mica_controller::app::App;
use mica_controller::db::placement::{self as store, Inventory, Provider};
use mica_controller::db::{Backend, Timestamp, hosts};
use mica_controller::scheduler::host_state::GroupSpec;
use mica_controller::scheduler::{Alternate, Placing, RequestSpec, Scheduler};
use mica_controller::testing::TestCloud;

/// Registers `n` compute hosts with `vcpus` / `memory_mb` each.
async fn hosts(app: &App, n: usize, vcpus: i64, memory_mb: i64) -> Vec<Provider> {
    let mut out = Vec::new();
    for k in 0..n {
        let name = format!("host-{k}");
        let now = Timestamp::now();
        let uuid = uuid::Uuid::new_v4().to_string();
        let p = Provider {
            uuid: uuid.clone(),
            name: name.clone(),
            generation: 0,
            parent_provider_uuid: None,
            root_provider_uuid: uuid.clone(),
            created_at: now,
            updated_at: now,
        };
        store::create_provider(app.db.pool(), &p).await.unwrap();
        let inv = |rc: &str, total: i64| Inventory {
            resource_class: rc.into(),
            total,
            reserved: 0,
            min_unit: 1,
            max_unit: total,
            step_size: 1,
            allocation_ratio: 1.0,
        };
        let mut tx = app.db.begin().await.unwrap();
        store::lock_provider(&mut tx, &uuid, None).await.unwrap();
        store::replace_inventories(
            &mut tx,
            &uuid,
            &[
                inv("VCPU", vcpus),
                inv("MEMORY_MB", memory_mb),
                inv("DISK_GB", 1000),
            ],
        )
        .await
        .unwrap();
        hosts::register_service(&mut tx, &name, "nova-compute", "compute", "test")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        out.push(
            store::get_provider(app.db.pool(), &uuid)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    out
}

fn spec(vcpus: i64, memory_mb: i64) -> RequestSpec {
    RequestSpec {
        project_id: "p".into(),
        user_id: "u".into(),
        resources: [
            ("VCPU".to_string(), vcpus),
            ("MEMORY_MB".to_string(), memory_mb),
            ("DISK_GB".to_string(), 1),
        ]
        .into(),
        ..RequestSpec::default()
    }
}

fn placing(n: usize) -> Vec<Placing> {
    (0..n)
        .map(|_| Placing {
            instance_uuid: uuid::Uuid::new_v4().to_string(),
        })
        .collect()
}

async fn usage(app: &App, providers: &[Provider]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for p in providers {
        let u = store::usages(app.db.pool(), &p.uuid).await.unwrap();
        out.insert(p.name.clone(), u.get("VCPU").copied().unwrap_or(0));
    }
    out
}

async fn three_replicas_never_overcommit(backend: Backend) {
    let cloud = TestCloud::start(backend, |c| c.database.max_connections = 24).await;
    let app = cloud.app.clone();
    let providers = hosts(&app, 10, 4, 4096).await;
    let replicas: Vec<Arc<Scheduler>> = (0..3)
        .map(|_| Scheduler::new(app.clone()).unwrap())
        .collect();
    // 120 instances, one request each, spread over the replicas and run at
    // once, for 40 slots.
    let mut tasks = Vec::new();
    for (n, p) in placing(120).into_iter().enumerate() {
        let s = replicas[n % 3].clone();
        tasks.push(tokio::spawn(async move {
            s.schedule(&spec(1, 1024), std::slice::from_ref(&p))
                .await
                .unwrap()
                .remove(0)
        }));
    }
    let mut placed = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => placed += 1,
            Err(no) => {
                assert!(no.details.starts_with("placement: 0"), "{}", no.details);
                refused += 1;
            }
        }
    }
    assert_eq!((placed, refused), (40, 80));
    let u = usage(&app, &providers).await;
    assert!(
        u.values().all(|n| *n == 4),
        "every host exactly full: {u:?}"
    );
    assert!(
        store::usage_drift(app.db.pool()).await.unwrap().is_empty(),
        "used columns in step"
    );
    cloud.stop().await;
}

async fn a_replayed_decision_keeps_its_host(backend: Backend) {
    let cloud = TestCloud::start(backend, |_| {}).await;
    let app = cloud.app.clone();
    let providers = hosts(&app, 3, 8, 8192).await;
    let s = Scheduler::new(app.clone()).unwrap();
    let p = placing(1);
    let first = s
        .schedule(&spec(2, 1024), &p)
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(first.alternates.len(), 2);
    for _ in 0..3 {
        let again = s
            .schedule(&spec(2, 1024), &p)
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(again.host, first.host);
        assert_eq!(again.provider_uuid, first.provider_uuid);
    }
    let other = Scheduler::new(app.clone()).unwrap();
    let again = other
        .schedule(&spec(2, 1024), &p)
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(again.host, first.host, "another replica agrees");
    let total: i64 = usage(&app, &providers).await.values().sum();
    assert_eq!(total, 2, "claimed once");
    cloud.stop().await;
}

async fn alternates_are_claimed_with_a_capacity_check(backend: Backend) {
    let cloud = TestCloud::start(backend, |_| {}).await;
    let app = cloud.app.clone();
    let providers = hosts(&app, 3, 2, 2048).await;
    let s = Scheduler::new(app.clone()).unwrap();
    // Fill host-0.
    let mut full = spec(2, 2048);
    full.force_host = Some("host-0".into());
    s.schedule(&full, &placing(1))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let alts: Vec<Alternate> = providers
        .iter()
        .map(|p| Alternate {
            host: p.name.clone(),
            provider_uuid: p.uuid.clone(),
        })
        .collect();
    let p = placing(1).remove(0).instance_uuid;
    let sel = s
        .claim_alternate(&spec(1, 1024), &p, &alts)
        .await
        .unwrap()
        .expect("an alternate with room");
    assert_eq!(sel.host, "host-1", "host-0 is full, host-1 is next");
    assert_eq!(sel.alternates.len(), 1, "the ones after it");
    // Tried hosts are skipped.
    let mut tried = spec(1, 1024);
    tried.ignore_hosts = ["host-1".to_string(), "host-2".to_string()].into();
    let q = placing(1).remove(0).instance_uuid;
    assert!(
        s.claim_alternate(&tried, &q, &alts)
            .await
            .unwrap()
            .is_none()
    );
    cloud.stop().await;
}

async fn a_stale_cache_costs_a_retry_not_a_wrong_answer(backend: Backend) {
    let cloud = TestCloud::start(backend, |c| c.scheduler.full_refresh_secs = 3600).await;
    let app = cloud.app.clone();
    let providers = hosts(&app, 1, 4, 4096).await;
    let a = Scheduler::new(app.clone()).unwrap();
    let b = Scheduler::new(app.clone()).unwrap();
    // Both caches loaded.
    a.schedule(&spec(1, 1024), &placing(1))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    b.schedule(&spec(1, 1024), &placing(1))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    // Each now claims in turn; every claim invalidates the other's view.
    for n in 0..2 {
        let s = if n % 2 == 0 { &a } else { &b };
        s.schedule(&spec(1, 1024), &placing(1))
            .await
            .unwrap()
            .remove(0)
            .unwrap();
    }
    assert!(
        a.schedule(&spec(1, 1024), &placing(1))
            .await
            .unwrap()
            .remove(0)
            .is_err()
    );
    assert!(
        b.schedule(&spec(1, 1024), &placing(1))
            .await
            .unwrap()
            .remove(0)
            .is_err()
    );
    assert_eq!(usage(&app, &providers).await["host-0"], 4);
    // Space freed behind a cache's back is found (a no is only said after
    // a full reload).
    let mut conn = app.db.pool().acquire().await.unwrap();
    let held = store::provider_allocations(&mut *conn, &providers[0].uuid)
        .await
        .unwrap();
    drop(conn);
    let victim = &held[0].consumer_uuid;
    mica_controller::conductor::build::free_allocations(&app, victim)
        .await
        .unwrap();
    assert!(
        a.schedule(&spec(1, 1024), &placing(1))
            .await
            .unwrap()
            .remove(0)
            .is_ok()
    );
    cloud.stop().await;
}

async fn group_policies_hold_across_replicas(backend: Backend) {
    let cloud = TestCloud::start(backend, |c| c.database.max_connections = 24).await;
    let app = cloud.app.clone();
    hosts(&app, 3, 64, 65536).await;
    let replicas: Vec<Arc<Scheduler>> = (0..3)
        .map(|_| Scheduler::new(app.clone()).unwrap())
        .collect();
    for policy in ["anti-affinity", "affinity"] {
        let members = placing(6);
        let group = GroupSpec {
            uuid: uuid::Uuid::new_v4().to_string(),
            policy: policy.into(),
            max_server_per_host: None,
            members: members.iter().map(|p| p.instance_uuid.clone()).collect(),
            hosts: BTreeMap::new(),
        };
        let mut tasks = Vec::new();
        for (n, m) in members.into_iter().enumerate() {
            let s = replicas[n % 3].clone();
            let mut sp = spec(1, 512);
            sp.group = Some(group.clone());
            tasks.push(tokio::spawn(async move {
                s.schedule(&sp, std::slice::from_ref(&m))
                    .await
                    .unwrap()
                    .remove(0)
            }));
        }
        let mut hosts_used = Vec::new();
        for t in tasks {
            if let Ok(sel) = t.await.unwrap() {
                hosts_used.push(sel.host);
            }
        }
        let distinct: BTreeSet<_> = hosts_used.iter().cloned().collect();
        if policy == "anti-affinity" {
            assert_eq!(hosts_used.len(), 3, "three of six placed: {hosts_used:?}");
            assert_eq!(distinct.len(), 3, "on three hosts");
        } else {
            assert_eq!(hosts_used.len(), 6, "all placed: {hosts_used:?}");
            assert_eq!(distinct.len(), 1, "on one host");
        }
    }
    cloud.stop().await;
}

both_databases!(
    three_replicas_never_overcommit,
    a_replayed_decision_keeps_its_host,
    alternates_are_claimed_with_a_capacity_check,
    a_stale_cache_costs_a_retry_not_a_wrong_answer,
    group_policies_hold_across_replicas,
);
