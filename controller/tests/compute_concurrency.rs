//! Races the API must win on PostgreSQL and SQLite: 100 parallel server
//! creates against a quota of 50 instances accept exactly 50, and 200
//! parallel port creates on a /24 never hand out one address (or MAC)
//! twice.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::Env;
use mica_controller::db::Backend;
use reqwest::Method;
use serde_json::{Value, json};

async fn hundred_creates_against_a_quota_of_fifty(backend: Backend) {
    let env = Arc::new(Env::start_with(backend, |c| c.database.max_connections = 16).await);
    let admin = env.admin().await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let f = env
        .nova_ok(
            &admin,
            Method::POST,
            "/flavors",
            61,
            Some(json!({"flavor": {"name": "t", "ram": 64, "vcpus": 1, "disk": 0}})),
            200,
        )
        .await;
    let flavor = f["flavor"]["id"].as_str().unwrap().to_owned();
    let r = env
        .call(&admin, Method::POST, &format!("{}/v2/images", env.image),
            Some(json!({"name": "i", "disk_format": "raw", "container_format": "bare", "visibility": "public"})))
        .await;
    let image = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.http
        .put(format!("{}/v2/images/{image}/file", env.image))
        .header("x-auth-token", &admin.token)
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; 512])
        .send()
        .await
        .unwrap();
    env.nova_ok(
        &admin,
        Method::PUT,
        &format!("/os-quota-sets/{}", alice.project_id),
        56,
        Some(json!({"quota_set": {"instances": 50, "cores": 1000, "ram": 1000000}})),
        200,
    )
    .await;
    let mut tasks = Vec::new();
    for n in 0..100 {
        let (env, alice, flavor, image) =
            (env.clone(), alice.clone(), flavor.clone(), image.clone());
        tasks.push(tokio::spawn(async move {
            let r = env
                .nova(&alice, Method::POST, "/servers", Some(96),
                    Some(json!({"server": {"name": format!("vm{n}"), "imageRef": image, "flavorRef": flavor, "networks": "auto"}})))
                .await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut accepted = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            202 => accepted += 1,
            403 => {
                let m = body["forbidden"]["message"].as_str().unwrap();
                assert!(m.starts_with("Quota exceeded for instances: Requested 1, but already used 50 of 50 instances"), "{m}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((accepted, refused), (50, 50));
    let listed = env
        .nova_ok(&alice, Method::GET, "/servers", 96, None, 200)
        .await;
    assert_eq!(listed["servers"].as_array().unwrap().len(), 50);
    // Each got a port with its own address on the shared network.
    let ports: Value = env
        .neutron(&alice, Method::GET, "/ports", None)
        .await
        .json()
        .await
        .unwrap();
    let ips: BTreeSet<String> = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ips.len(), 50);
    let env = Arc::try_unwrap(env).ok().expect("the tasks are done");
    env.stop().await;
}

async fn two_hundred_ports_on_a_slash_24(backend: Backend) {
    let env = Arc::new(Env::start_with(backend, |c| c.database.max_connections = 16).await);
    let alice = env.user_with_role("p1", "alice", "member").await;
    let n: Value = env
        .neutron(
            &alice,
            Method::POST,
            "/networks",
            Some(json!({"network": {"name": "n"}})),
        )
        .await
        .json()
        .await
        .unwrap();
    let net = n["network"]["id"].as_str().unwrap().to_owned();
    let r = env
        .neutron(
            &alice,
            Method::POST,
            "/subnets",
            Some(json!({"subnet": {"network_id": net, "cidr": "10.20.30.0/24", "ip_version": 4}})),
        )
        .await;
    assert_eq!(r.status().as_u16(), 201);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (env, alice, net) = (env.clone(), alice.clone(), net.clone());
        tasks.push(tokio::spawn(async move {
            let r = env
                .neutron(
                    &alice,
                    Method::POST,
                    "/ports",
                    Some(json!({"port": {"network_id": net}})),
                )
                .await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, 201, "{body}");
            (
                body["port"]["fixed_ips"][0]["ip_address"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                body["port"]["mac_address"].as_str().unwrap().to_owned(),
            )
        }));
    }
    let mut ips = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for t in tasks {
        let (ip, mac) = t.await.unwrap();
        assert!(
            ip.starts_with("10.20.30.")
                && ip != "10.20.30.1"
                && ip != "10.20.30.0"
                && ip != "10.20.30.255",
            "{ip}"
        );
        assert!(ips.insert(ip.clone()), "{ip} handed out twice");
        assert!(macs.insert(mac.clone()), "{mac} handed out twice");
    }
    assert_eq!(ips.len(), 200);
    // The database agrees.
    let listed: Value = env
        .neutron(
            &alice,
            Method::GET,
            &format!("/ports?network_id={net}"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["ports"].as_array().unwrap().len(), 200);
    let env = Arc::try_unwrap(env).ok().expect("the tasks are done");
    env.stop().await;
}

both_databases!(
    hundred_creates_against_a_quota_of_fifty,
    two_hundred_ports_on_a_slash_24
);
