//! Placement API against both databases: microversions, providers and
//! generations, inventories, traits, aggregates, resource classes,
//! allocations, candidates, and concurrent claims.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Caller, Env, placement_error};
use mica_controller::app::placement as app;
use mica_controller::db::Backend;
use mica_controller::db::placement::{Claim, ConsumerGeneration, ProviderFilter};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both_databases!(
    microversions_are_negotiated,
    providers_inventories_and_generations,
    nested_providers,
    traits_aggregates_and_resource_classes,
    allocations_usages_and_candidates,
    inventory_below_usage_is_refused,
    fifty_concurrent_claims_for_twenty_slots_over_http,
    fifty_concurrent_scheduler_claims_for_twenty_slots,
    only_admins_use_placement,
);

async fn new_provider(env: &Env, who: &Caller, name: &str) -> String {
    let r = env
        .placement(
            who,
            Method::POST,
            "/resource_providers",
            20,
            Some(json!({"name": name})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "creating {name}");
    r.json::<Value>().await.unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn generation(env: &Env, who: &Caller, rp: &str) -> i64 {
    let r = env
        .placement(
            who,
            Method::GET,
            &format!("/resource_providers/{rp}"),
            20,
            None,
        )
        .await;
    r.json::<Value>().await.unwrap()["generation"]
        .as_i64()
        .unwrap()
}

async fn set_inventory(env: &Env, who: &Caller, rp: &str, inv: Value) -> Value {
    let g = generation(env, who, rp).await;
    let r = env
        .placement(
            who,
            Method::PUT,
            &format!("/resource_providers/{rp}/inventories"),
            24,
            Some(json!({"resource_provider_generation": g, "inventories": inv})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// The denormalized usage column agrees with the allocations.
async fn assert_no_drift(env: &Env) {
    let drift = mica_controller::db::placement::usage_drift(env.cloud.app.db.pool())
        .await
        .unwrap();
    assert!(drift.is_empty(), "{drift:?}");
}

async fn microversions_are_negotiated(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    // Root: no token, version document.
    let r = env
        .http
        .get(format!("{}/", env.placement))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["openstack-api-version"], "placement 1.0");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["versions"][0]["max_version"], "1.24");
    assert_eq!(b["versions"][0]["min_version"], "1.0");
    // Echo, Vary, latest.
    let r = env
        .placement(&admin, Method::GET, "/resource_providers", 17, None)
        .await;
    assert_eq!(r.headers()["openstack-api-version"], "placement 1.17");
    assert_eq!(r.headers()["vary"], "openstack-api-version");
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let r = env
        .http
        .get(format!("{}/resource_providers", env.placement))
        .header("x-auth-token", &admin.token)
        .header("openstack-api-version", "placement latest")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["openstack-api-version"], "placement 1.24");
    // Out of range: 406; malformed: 400.
    let r = env
        .placement(&admin, Method::GET, "/resource_providers", 99, None)
        .await;
    let (code, detail) = placement_error(r, 406).await;
    assert!(detail.contains("1.99"), "{detail}");
    assert_eq!(code, None, "no code below 1.23");
    let r = env
        .http
        .get(format!("{}/resource_providers", env.placement))
        .header("x-auth-token", &admin.token)
        .header("openstack-api-version", "placement one.two")
        .send()
        .await
        .unwrap();
    placement_error(r, 400).await;
    // Routes newer than the version are 404.
    let r = env.placement(&admin, Method::GET, "/traits", 5, None).await;
    placement_error(r, 404).await;
    let r = env.placement(&admin, Method::GET, "/traits", 6, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Fields by version.
    let rp = new_provider(&env, &admin, "h1").await;
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{rp}"),
            13,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(b.get("root_provider_uuid").is_none());
    let rels: Vec<&str> = b["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["rel"].as_str().unwrap())
        .collect();
    assert_eq!(
        rels,
        vec![
            "self",
            "inventories",
            "usages",
            "aggregates",
            "traits",
            "allocations"
        ]
    );
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{rp}"),
            14,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["root_provider_uuid"], rp);
    assert!(b["parent_provider_uuid"].is_null());
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{rp}"),
            0,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let rels: Vec<&str> = b["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["rel"].as_str().unwrap())
        .collect();
    assert_eq!(rels, vec!["self", "inventories", "usages"]);
    env.stop().await;
}

async fn providers_inventories_and_generations(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    // Before 1.20 a create is 201 without a body.
    let r = env
        .placement(
            &admin,
            Method::POST,
            "/resource_providers",
            19,
            Some(json!({"name": "old"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/resource_providers/")
    );
    let rp = new_provider(&env, &admin, "compute1").await;
    assert_eq!(generation(&env, &admin, &rp).await, 0);
    // Duplicate name: 409 with its code.
    let r = env
        .placement(
            &admin,
            Method::POST,
            "/resource_providers",
            23,
            Some(json!({"name": "compute1"})),
        )
        .await;
    let (code, _) = placement_error(r, 409).await;
    assert_eq!(code.as_deref(), Some("placement.duplicate_name"));
    // Inventories: generation checked and bumped.
    let inv = json!({"VCPU": {"total": 8, "allocation_ratio": 4.0, "max_unit": 8},
                     "MEMORY_MB": {"total": 4096, "reserved": 512}});
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{rp}/inventories"),
            24,
            Some(json!({"resource_provider_generation": 5, "inventories": inv})),
        )
        .await;
    let (code, _) = placement_error(r, 409).await;
    assert_eq!(code.as_deref(), Some("placement.concurrent_update"));
    let b = set_inventory(&env, &admin, &rp, inv).await;
    assert_eq!(b["resource_provider_generation"], 1);
    assert_eq!(b["inventories"]["VCPU"]["allocation_ratio"], 4.0);
    assert_eq!(b["inventories"]["MEMORY_MB"]["max_unit"], 2147483647);
    assert_eq!(b["inventories"]["MEMORY_MB"]["min_unit"], 1);
    // One inventory.
    let r = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{rp}/inventories/VCPU"),
            24,
            None,
        )
        .await;
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["total"], 8);
    assert_eq!(b["resource_provider_generation"], 1);
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{rp}/inventories/VCPU"),
            24,
            Some(json!({"resource_provider_generation": 1, "total": 16})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["resource_provider_generation"],
        2
    );
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{rp}/inventories/VCPU"),
            24,
            Some(json!({"resource_provider_generation": 1, "total": 32})),
        )
        .await;
    placement_error(r, 409).await;
    let r = env
        .placement(
            &admin,
            Method::POST,
            &format!("/resource_providers/{rp}/inventories"),
            24,
            Some(json!({"resource_class": "DISK_GB", "total": 100})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = env
        .placement(
            &admin,
            Method::DELETE,
            &format!("/resource_providers/{rp}/inventories/DISK_GB"),
            24,
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Bad inventories: 400, nothing changed.
    let g = generation(&env, &admin, &rp).await;
    for bad in [
        json!({"VCPU": {"total": 4, "reserved": 5}}),
        json!({"VCPU": {"total": 4, "reserved": 4}}),
        json!({"VCPU": {"total": 0}}),
        json!({"VCPU": {"total": "four"}}),
        json!({"VCPU": {"total": 4, "min_unit": 5, "max_unit": 2}}),
        json!({"VCPU": {"total": 4, "bogus": 1}}),
        json!({"NOT_A_CLASS": {"total": 4}}),
    ] {
        let r = env
            .placement(
                &admin,
                Method::PUT,
                &format!("/resource_providers/{rp}/inventories"),
                24,
                Some(json!({"resource_provider_generation": g, "inventories": bad})),
            )
            .await;
        placement_error(r, 400).await;
    }
    assert_eq!(generation(&env, &admin, &rp).await, g);
    // Wrong content type, malformed JSON.
    let r = env
        .http
        .put(format!(
            "{}/resource_providers/{rp}/inventories",
            env.placement
        ))
        .header("x-auth-token", &admin.token)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    placement_error(r, 415).await;
    let r = env
        .http
        .put(format!(
            "{}/resource_providers/{rp}/inventories",
            env.placement
        ))
        .header("x-auth-token", &admin.token)
        .header("content-type", "application/json")
        .body("{\"inventories\": ")
        .send()
        .await
        .unwrap();
    placement_error(r, 400).await;
    // Rename; list by name; delete.
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{rp}"),
            24,
            Some(json!({"name": "compute-1"})),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "compute-1");
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            "/resource_providers?name=compute-1",
            24,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["resource_providers"].as_array().unwrap().len(), 1);
    let r = env
        .placement(&admin, Method::GET, "/resource_providers?bogus=1", 24, None)
        .await;
    placement_error(r, 400).await;
    let r = env
        .placement(
            &admin,
            Method::DELETE,
            &format!("/resource_providers/{rp}"),
            24,
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{rp}"),
            24,
            None,
        )
        .await;
    let (code, _) = placement_error(r, 404).await;
    assert_eq!(
        code.as_deref(),
        Some("placement.resource_provider.not_found")
    );
    env.stop().await;
}

async fn nested_providers(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let root = new_provider(&env, &admin, "root").await;
    let r = env
        .placement(
            &admin,
            Method::POST,
            "/resource_providers",
            20,
            Some(json!({"name": "child", "parent_provider_uuid": root})),
        )
        .await;
    let child: Value = r.json().await.unwrap();
    assert_eq!(child["parent_provider_uuid"], root);
    assert_eq!(child["root_provider_uuid"], root);
    let child = child["uuid"].as_str().unwrap().to_owned();
    let other = new_provider(&env, &admin, "other").await;
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers?in_tree={child}"),
            14,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["resource_providers"].as_array().unwrap().len(), 2);
    // Parents can't be deleted; children can't be re-parented.
    let r = env
        .placement(
            &admin,
            Method::DELETE,
            &format!("/resource_providers/{root}"),
            23,
            None,
        )
        .await;
    let (code, _) = placement_error(r, 409).await;
    assert_eq!(
        code.as_deref(),
        Some("placement.resource_provider.cannot_delete_parent")
    );
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{child}"),
            20,
            Some(json!({"name": "child", "parent_provider_uuid": other})),
        )
        .await;
    placement_error(r, 400).await;
    // A root can be given a parent; its tree follows; loops are refused.
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{root}"),
            20,
            Some(json!({"name": "root", "parent_provider_uuid": child})),
        )
        .await;
    placement_error(r, 400).await;
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{root}"),
            20,
            Some(json!({"name": "root", "parent_provider_uuid": other})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{child}"),
            20,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["root_provider_uuid"], other);
    // Unknown parent.
    let r = env
        .placement(
            &admin,
            Method::POST,
            "/resource_providers",
            20,
            Some(
                json!({"name": "orphan", "parent_provider_uuid": uuid::Uuid::new_v4().to_string()}),
            ),
        )
        .await;
    placement_error(r, 400).await;
    env.stop().await;
}

async fn traits_aggregates_and_resource_classes(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let rp = new_provider(&env, &admin, "h").await;
    // Custom traits.
    assert_eq!(
        env.placement(&admin, Method::PUT, "/traits/CUSTOM_FAST", 6, None)
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        env.placement(&admin, Method::PUT, "/traits/CUSTOM_FAST", 6, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        env.placement(&admin, Method::GET, "/traits/CUSTOM_FAST", 6, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        env.placement(&admin, Method::GET, "/traits/HW_CPU_X86_AVX2", 6, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    placement_error(
        env.placement(&admin, Method::GET, "/traits/CUSTOM_NOPE", 6, None)
            .await,
        404,
    )
    .await;
    placement_error(
        env.placement(&admin, Method::PUT, "/traits/lowercase", 6, None)
            .await,
        400,
    )
    .await;
    placement_error(
        env.placement(&admin, Method::DELETE, "/traits/HW_CPU_X86_AVX2", 6, None)
            .await,
        400,
    )
    .await;
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            "/traits?name=startswith:CUSTOM_",
            6,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["traits"], json!(["CUSTOM_FAST"]));
    // Provider traits, generation-checked.
    let g = generation(&env, &admin, &rp).await;
    let r = env
        .placement(&admin, Method::PUT, &format!("/resource_providers/{rp}/traits"), 6,
            Some(json!({"traits": ["CUSTOM_FAST", "HW_CPU_X86_AVX2"], "resource_provider_generation": g})))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["resource_provider_generation"],
        g + 1
    );
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{rp}/traits"),
            6,
            Some(json!({"traits": [], "resource_provider_generation": g})),
        )
        .await;
    placement_error(r, 409).await;
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{rp}/traits"),
            6,
            Some(json!({"traits": ["CUSTOM_UNKNOWN"], "resource_provider_generation": g + 1})),
        )
        .await;
    placement_error(r, 400).await;
    let b: Value = env
        .placement(&admin, Method::GET, "/traits?associated=true", 6, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["traits"], json!(["CUSTOM_FAST", "HW_CPU_X86_AVX2"]));
    placement_error(
        env.placement(&admin, Method::DELETE, "/traits/CUSTOM_FAST", 6, None)
            .await,
        409,
    )
    .await;
    // Aggregates: a list before 1.19, an object with generation from 1.19.
    let agg1 = uuid::Uuid::new_v4().to_string();
    let agg2 = uuid::Uuid::new_v4().to_string();
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{rp}/aggregates"),
            1,
            Some(json!([agg1])),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"aggregates": [agg1]})
    );
    let g = generation(&env, &admin, &rp).await;
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{rp}/aggregates"),
            19,
            Some(json!({"aggregates": [agg1, agg2], "resource_provider_generation": g})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["resource_provider_generation"], g + 1);
    assert_eq!(b["aggregates"].as_array().unwrap().len(), 2);
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/resource_providers/{rp}/aggregates"),
            19,
            Some(json!({"aggregates": [], "resource_provider_generation": g})),
        )
        .await;
    placement_error(r, 409).await;
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers?member_of={agg2}"),
            3,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["resource_providers"][0]["uuid"], rp);
    // Resource classes.
    let r = env
        .placement(
            &admin,
            Method::POST,
            "/resource_classes",
            2,
            Some(json!({"name": "CUSTOM_GOLD"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    placement_error(
        env.placement(
            &admin,
            Method::POST,
            "/resource_classes",
            2,
            Some(json!({"name": "CUSTOM_GOLD"})),
        )
        .await,
        409,
    )
    .await;
    placement_error(
        env.placement(
            &admin,
            Method::POST,
            "/resource_classes",
            2,
            Some(json!({"name": "GOLD"})),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(
        env.placement(
            &admin,
            Method::PUT,
            "/resource_classes/CUSTOM_SILVER",
            7,
            None
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        env.placement(
            &admin,
            Method::PUT,
            "/resource_classes/CUSTOM_SILVER",
            7,
            None
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    let b: Value = env
        .placement(&admin, Method::GET, "/resource_classes", 2, None)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = b["resource_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"VCPU")
            && names.contains(&"CUSTOM_GOLD")
            && names.contains(&"CUSTOM_SILVER")
    );
    placement_error(
        env.placement(&admin, Method::DELETE, "/resource_classes/VCPU", 2, None)
            .await,
        400,
    )
    .await;
    set_inventory(&env, &admin, &rp, json!({"CUSTOM_GOLD": {"total": 3}})).await;
    placement_error(
        env.placement(
            &admin,
            Method::DELETE,
            "/resource_classes/CUSTOM_GOLD",
            2,
            None,
        )
        .await,
        409,
    )
    .await;
    assert_eq!(
        env.placement(
            &admin,
            Method::DELETE,
            "/resource_classes/CUSTOM_SILVER",
            2,
            None
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    placement_error(
        env.placement(
            &admin,
            Method::GET,
            "/resource_classes/CUSTOM_SILVER",
            2,
            None,
        )
        .await,
        404,
    )
    .await;
    env.stop().await;
}

async fn allocations_usages_and_candidates(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let agg = uuid::Uuid::new_v4().to_string();
    let mut rps = Vec::new();
    for (i, vcpus) in [4, 8, 16].into_iter().enumerate() {
        let rp = new_provider(&env, &admin, &format!("host{i}")).await;
        set_inventory(
            &env,
            &admin,
            &rp,
            json!({
                "VCPU": {"total": vcpus, "max_unit": vcpus},
                "MEMORY_MB": {"total": 8192, "step_size": 256},
                "DISK_GB": {"total": 100},
            }),
        )
        .await;
        rps.push(rp);
    }
    // host1 has SSD, host2 is in the aggregate.
    let g = generation(&env, &admin, &rps[1]).await;
    env.placement(
        &admin,
        Method::PUT,
        &format!("/resource_providers/{}/traits", rps[1]),
        6,
        Some(json!({"traits": ["STORAGE_DISK_SSD"], "resource_provider_generation": g})),
    )
    .await;
    let g = generation(&env, &admin, &rps[2]).await;
    env.placement(
        &admin,
        Method::PUT,
        &format!("/resource_providers/{}/aggregates", rps[2]),
        19,
        Some(json!({"aggregates": [agg], "resource_provider_generation": g})),
    )
    .await;

    let cands = |q: String, minor: u32| {
        let (env, admin) = (&env, &admin);
        async move {
            let r = env
                .placement(
                    admin,
                    Method::GET,
                    &format!("/allocation_candidates?{q}"),
                    minor,
                    None,
                )
                .await;
            assert_eq!(r.status(), StatusCode::OK, "{q}");
            let b: Value = r.json().await.unwrap();
            let mut uuids: Vec<String> = b["provider_summaries"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            uuids.sort();
            (uuids, b)
        }
    };
    let sorted = |v: Vec<&String>| {
        let mut v: Vec<String> = v.into_iter().cloned().collect();
        v.sort();
        v
    };
    let (all, b) = cands("resources=VCPU:2,MEMORY_MB:512".into(), 24).await;
    assert_eq!(all, sorted(rps.iter().collect()));
    let req = &b["allocation_requests"][0]["allocations"];
    assert_eq!(req.as_object().unwrap().len(), 1);
    let s = &b["provider_summaries"][&rps[1]];
    assert_eq!(s["resources"]["VCPU"], json!({"capacity": 8, "used": 0}));
    assert!(
        s["resources"].get("DISK_GB").is_none(),
        "only requested classes before 1.27"
    );
    assert_eq!(s["traits"], json!(["STORAGE_DISK_SSD"]));
    let (big, _) = cands("resources=VCPU:6".into(), 24).await;
    assert_eq!(big, sorted(vec![&rps[1], &rps[2]]));
    let (step, _) = cands("resources=MEMORY_MB:100".into(), 24).await;
    assert!(step.is_empty(), "step_size 256 refuses 100");
    let (ssd, _) = cands("resources=VCPU:1&required=STORAGE_DISK_SSD".into(), 24).await;
    assert_eq!(ssd, vec![rps[1].clone()]);
    let (no_ssd, _) = cands("resources=VCPU:1&required=!STORAGE_DISK_SSD".into(), 24).await;
    assert_eq!(no_ssd, sorted(vec![&rps[0], &rps[2]]));
    let (member, _) = cands(format!("resources=VCPU:1&member_of={agg}"), 24).await;
    assert_eq!(member, vec![rps[2].clone()]);
    let (limited, b) = cands("resources=VCPU:1&limit=2".into(), 24).await;
    assert_eq!(limited.len(), 2);
    assert_eq!(b["allocation_requests"].as_array().unwrap().len(), 2);
    // Old formats.
    let (_, b) = cands("resources=VCPU:1".into(), 10).await;
    assert!(b["allocation_requests"][0]["allocations"].is_array());
    assert!(b["provider_summaries"][&rps[0]].get("traits").is_none());
    // Bad queries.
    for q in [
        "resources=VCPU",
        "resources=VCPU:0",
        "resources=NOPE:1",
        "resources=VCPU:1&required=CUSTOM_NOPE",
        "resources=VCPU:1&member_of=not-a-uuid",
        "resources=VCPU:1&limit=0",
        "required=HW_CPU_X86_AVX2",
    ] {
        let r = env
            .placement(
                &admin,
                Method::GET,
                &format!("/allocation_candidates?{q}"),
                24,
                None,
            )
            .await;
        placement_error(r, 400).await;
    }

    // Claim on host0: 4 VCPU total.
    let consumer = uuid::Uuid::new_v4().to_string();
    let put = |consumer: String, rp: String, vcpu: i64| {
        let (env, admin) = (&env, &admin);
        async move {
            env.placement(
                admin,
                Method::PUT,
                &format!("/allocations/{consumer}"),
                12,
                Some(json!({
                    "allocations": {rp: {"resources": {"VCPU": vcpu, "MEMORY_MB": 512}}},
                    "project_id": admin.project_id, "user_id": admin.user_id,
                })),
            )
            .await
        }
    };
    assert_eq!(
        put(consumer.clone(), rps[0].clone(), 3).await.status(),
        StatusCode::NO_CONTENT
    );
    let r = put(uuid::Uuid::new_v4().to_string(), rps[0].clone(), 2).await;
    let (_, detail) = placement_error(r, 409).await;
    assert!(detail.contains("capacity"), "{detail}");
    let r = put(
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        1,
    )
    .await;
    placement_error(r, 400).await;
    // Replacing the consumer's own allocation frees its old usage first.
    assert_eq!(
        put(consumer.clone(), rps[0].clone(), 4).await.status(),
        StatusCode::NO_CONTENT
    );
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/allocations/{consumer}"),
            12,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        b["allocations"][&rps[0]]["resources"],
        json!({"VCPU": 4, "MEMORY_MB": 512})
    );
    assert_eq!(b["project_id"], admin.project_id);
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{}/usages", rps[0]),
            12,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        b["usages"],
        json!({"VCPU": 4, "MEMORY_MB": 512, "DISK_GB": 0})
    );
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/usages?project_id={}", admin.project_id),
            9,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["usages"], json!({"VCPU": 4, "MEMORY_MB": 512}));
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{}/allocations", rps[0]),
            12,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["allocations"][&consumer]["resources"]["VCPU"], 4);
    // host0 is full now: no longer a candidate for VCPU.
    let (after, b) = cands("resources=VCPU:1".into(), 24).await;
    assert_eq!(after, sorted(vec![&rps[1], &rps[2]]));
    assert!(b["provider_summaries"].get(&rps[0]).is_none());
    // The provider can't go while it holds allocations.
    let r = env
        .placement(
            &admin,
            Method::DELETE,
            &format!("/resource_providers/{}", rps[0]),
            23,
            None,
        )
        .await;
    let (code, _) = placement_error(r, 409).await;
    assert_eq!(code.as_deref(), Some("placement.resource_provider.inuse"));
    // Pre-1.12 list format, pre-1.8 without owner.
    let old = uuid::Uuid::new_v4().to_string();
    let r = env.placement(&admin, Method::PUT, &format!("/allocations/{old}"), 0, Some(json!({
        "allocations": [{"resource_provider": {"uuid": rps[1]}, "resources": {"DISK_GB": 10}}]
    }))).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = env.placement(&admin, Method::PUT, &format!("/allocations/{old}"), 8, Some(json!({
        "allocations": [{"resource_provider": {"uuid": rps[1]}, "resources": {"DISK_GB": 10}}]
    }))).await;
    placement_error(r, 400).await;
    // POST several consumers at once (1.13), freeing one of them.
    let c2 = uuid::Uuid::new_v4().to_string();
    let r = env.placement(&admin, Method::POST, "/allocations", 13, Some(json!({
        old.clone(): {"allocations": {}, "project_id": admin.project_id, "user_id": admin.user_id},
        c2.clone(): {"allocations": {rps[2].clone(): {"resources": {"VCPU": 2}}}, "project_id": admin.project_id, "user_id": admin.user_id},
    }))).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/allocations/{old}"),
            12,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b, json!({"allocations": {}}));
    // Delete.
    assert_eq!(
        env.placement(
            &admin,
            Method::DELETE,
            &format!("/allocations/{consumer}"),
            12,
            None
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    placement_error(
        env.placement(
            &admin,
            Method::DELETE,
            &format!("/allocations/{consumer}"),
            12,
            None,
        )
        .await,
        404,
    )
    .await;
    assert_no_drift(&env).await;
    env.stop().await;
}

async fn inventory_below_usage_is_refused(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let rp = new_provider(&env, &admin, "h").await;
    set_inventory(
        &env,
        &admin,
        &rp,
        json!({"VCPU": {"total": 8}, "DISK_GB": {"total": 50}}),
    )
    .await;
    let c = uuid::Uuid::new_v4().to_string();
    let r = env
        .placement(
            &admin,
            Method::PUT,
            &format!("/allocations/{c}"),
            12,
            Some(json!({
                "allocations": {rp.clone(): {"resources": {"VCPU": 6, "DISK_GB": 10}}},
                "project_id": admin.project_id, "user_id": admin.user_id,
            })),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let g = generation(&env, &admin, &rp).await;
    let try_put = |inv: Value| {
        let (env, admin, rp) = (&env, &admin, rp.clone());
        async move {
            env.placement(
                admin,
                Method::PUT,
                &format!("/resource_providers/{rp}/inventories"),
                24,
                Some(json!({"resource_provider_generation": g, "inventories": inv})),
            )
            .await
        }
    };
    // Below usage (total, reserved or ratio), or dropping a class in use.
    for bad in [
        json!({"VCPU": {"total": 4}, "DISK_GB": {"total": 50}}),
        json!({"VCPU": {"total": 8, "reserved": 3}, "DISK_GB": {"total": 50}}),
        json!({"VCPU": {"total": 8, "allocation_ratio": 0.5}, "DISK_GB": {"total": 50}}),
        json!({"VCPU": {"total": 8}}),
    ] {
        let (code, _) = placement_error(try_put(bad).await, 409).await;
        assert_eq!(code.as_deref(), Some("placement.inventory.inuse"));
    }
    let r = env
        .placement(
            &admin,
            Method::DELETE,
            &format!("/resource_providers/{rp}/inventories/VCPU"),
            24,
            None,
        )
        .await;
    placement_error(r, 409).await;
    let r = env
        .placement(
            &admin,
            Method::DELETE,
            &format!("/resource_providers/{rp}/inventories"),
            24,
            None,
        )
        .await;
    placement_error(r, 409).await;
    // Nothing changed.
    assert_eq!(generation(&env, &admin, &rp).await, g);
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{rp}/inventories"),
            24,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["inventories"]["VCPU"]["total"], 8);
    // Exactly at usage is allowed.
    let r = try_put(json!({"VCPU": {"total": 6}, "DISK_GB": {"total": 10}})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_no_drift(&env).await;
    env.stop().await;
}

async fn fifty_concurrent_claims_for_twenty_slots_over_http(backend: Backend) {
    let env = Arc::new(Env::start(backend).await);
    let admin = env.admin().await;
    let rp = new_provider(&env, &admin, "small").await;
    set_inventory(&env, &admin, &rp, json!({"VCPU": {"total": 20}})).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (env, admin, rp) = (env.clone(), admin.clone(), rp.clone());
        tasks.push(tokio::spawn(async move {
            let c = uuid::Uuid::new_v4().to_string();
            env.placement(
                &admin,
                Method::PUT,
                &format!("/allocations/{c}"),
                12,
                Some(json!({
                    "allocations": {rp: {"resources": {"VCPU": 1}}},
                    "project_id": admin.project_id, "user_id": admin.user_id,
                })),
            )
            .await
            .status()
        }));
    }
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap().as_u16()).or_default() += 1;
    }
    assert_eq!(by_status, BTreeMap::from([(204, 20), (409, 30)]));
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{rp}/usages"),
            12,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["usages"]["VCPU"], 20);
    let b: Value = env
        .placement(
            &admin,
            Method::GET,
            &format!("/resource_providers/{rp}/allocations"),
            12,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["allocations"].as_object().unwrap().len(), 20);
    assert_no_drift(&env).await;
    Arc::into_inner(env).unwrap().stop().await;
}

/// The scheduler's path (no HTTP): read candidates, claim with the
/// generation seen, retry on a generation conflict with fresh candidates.
async fn fifty_concurrent_scheduler_claims_for_twenty_slots(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let rp = new_provider(&env, &admin, "small").await;
    set_inventory(
        &env,
        &admin,
        &rp,
        json!({"VCPU": {"total": 10, "allocation_ratio": 2.0}}),
    )
    .await;
    let app = env.cloud.app.clone();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let consumer = uuid::Uuid::new_v4().to_string();
            let mut conflicts = 0;
            loop {
                let f = ProviderFilter {
                    resources: vec![("VCPU".into(), 1)],
                    ..Default::default()
                };
                let cands = app::candidates(&app, f).await.unwrap();
                let Some(c) = cands.first() else {
                    return (false, conflicts);
                };
                let claim = Claim {
                    consumer_uuid: consumer.clone(),
                    project_id: "p".into(),
                    user_id: "u".into(),
                    consumer_generation: ConsumerGeneration::New,
                    allocations: BTreeMap::from([(
                        c.provider.uuid.clone(),
                        BTreeMap::from([("VCPU".to_owned(), 1)]),
                    )]),
                };
                let gens = BTreeMap::from([(c.provider.uuid.clone(), c.provider.generation)]);
                match app::claim(&app, &[claim], &gens).await {
                    Ok(()) => return (true, conflicts),
                    Err(e) if e.code == Some("placement.concurrent_update") => conflicts += 1,
                    Err(e) if e.kind == mica_controller::Kind::Conflict => {
                        return (false, conflicts);
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
        }));
    }
    let mut won = 0;
    let mut conflicts = 0;
    for t in tasks {
        let (ok, c) = t.await.unwrap();
        won += usize::from(ok);
        conflicts += c;
    }
    assert_eq!(won, 20);
    let used = mica_controller::db::placement::usages(app.db.pool(), &rp)
        .await
        .unwrap();
    assert_eq!(used["VCPU"], 20);
    eprintln!("{conflicts} generation conflicts retried");
    assert_no_drift(&env).await;
    env.stop().await;
}

async fn only_admins_use_placement(backend: Backend) {
    let env = Env::start(backend).await;
    let member = env.user_with_role("p", "alice", "member").await;
    let r = env
        .placement(&member, Method::GET, "/resource_providers", 24, None)
        .await;
    let (code, _) = placement_error(r, 403).await;
    assert_eq!(code.as_deref(), Some("placement.undefined_code"));
    let r = env
        .http
        .get(format!("{}/resource_providers", env.placement))
        .send()
        .await
        .unwrap();
    placement_error(r, 401).await;
    env.stop().await;
}
