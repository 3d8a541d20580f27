//! The compute API over HTTP, on PostgreSQL and SQLite: discovery and
//! microversions, the fields of a server at 2.1 and at the maximum, JSON
//! types, lists (filters, sorting, paging links), the 409s of API.md's
//! state table, quota 403s, visibility (404) and admin-only APIs (403),
//! flavors, key pairs, server groups, hosts, and what reaches the
//! conductor over the bus.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::{Caller, Env, nova_error};
use mica_controller::app::compute::states::vm;
use mica_controller::db::instances::{self as inst, Change, Expect};
use mica_controller::db::{Backend, Timestamp, hosts};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const MAX: u32 = 96;

/// A flavor, an active image, and the admin.
struct Fixture {
    admin: Caller,
    flavor: String,
    small: String,
    image: String,
}

async fn upload_image(env: &Env, who: &Caller, name: &str, public: bool) -> String {
    let r = env
        .call(
            who,
            Method::POST,
            &format!("{}/v2/images", env.image),
            Some(
                json!({"name": name, "disk_format": "raw", "container_format": "bare",
                "visibility": if public { "public" } else { "private" }}),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = env
        .http
        .put(format!("{}/v2/images/{id}/file", env.image))
        .header("x-auth-token", &who.token)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    id
}

async fn fixture(env: &Env) -> Fixture {
    let admin = env.admin().await;
    let f = env
        .nova_ok(
            &admin,
            Method::POST,
            "/flavors",
            61,
            Some(json!({"flavor": {"name": "m1.tiny", "ram": 512, "vcpus": 1, "disk": 1}})),
            200,
        )
        .await;
    let flavor = f["flavor"]["id"].as_str().unwrap().to_owned();
    env.nova_ok(
        &admin,
        Method::POST,
        "/flavors",
        61,
        Some(
            json!({"flavor": {"name": "m1.small", "ram": 1024, "vcpus": 2, "disk": 2, "id": "42"}}),
        ),
        200,
    )
    .await;
    let image = upload_image(env, &admin, "cirros", true).await;
    Fixture {
        admin,
        flavor,
        small: "42".into(),
        image,
    }
}

async fn create_server(env: &Env, who: &Caller, fx: &Fixture, name: &str, extra: Value) -> String {
    let mut server =
        json!({"name": name, "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none"});
    if let Value::Object(o) = extra {
        for (k, v) in o {
            server[k] = v;
        }
    }
    let body = env
        .nova_ok(
            who,
            Method::POST,
            "/servers",
            MAX,
            Some(json!({"server": server})),
            202,
        )
        .await;
    body["server"]["id"].as_str().unwrap().to_owned()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Puts an instance in a state directly, as the conductor would.
async fn force_state(env: &Env, id: &str, vm_state: &str, host: Option<&str>) {
    let launched = if vm_state == vm::BUILDING {
        None
    } else {
        Some(Timestamp::now())
    };
    inst::update_instance(
        env.cloud.app.db.pool(),
        id,
        &Expect::default(),
        &Change {
            vm_state: Some(vm_state.into()),
            task_state: Some(None),
            launched_at: Some(launched),
            host: Some(host.map(str::to_owned)),
            node: Some(host.map(str::to_owned)),
            power_state: Some(if vm_state == vm::ACTIVE { 1 } else { 4 }),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .expect("the instance is live");
}

/// Registers a compute host as an agent would (through the conductor):
/// service, compute node, placement provider with inventories.
async fn fake_host(env: &Env, admin: &Caller, host: &str) -> String {
    let uuid = uuid::Uuid::new_v4().to_string();
    let r = env
        .placement(
            admin,
            Method::POST,
            "/resource_providers",
            20,
            Some(json!({"name": host, "uuid": uuid})),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let r = env
        .placement(
            admin,
            Method::PUT,
            &format!("/resource_providers/{uuid}/inventories"),
            20,
            Some(json!({
                "resource_provider_generation": 0,
                "inventories": {
                    "VCPU": {"total": 8, "allocation_ratio": 4.0},
                    "MEMORY_MB": {"total": 16384},
                    "DISK_GB": {"total": 100}
                }
            })),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let mut conn = env.cloud.app.db.pool().acquire().await.unwrap();
    hosts::register_service(&mut conn, host, "nova-compute", "compute", "0.1.0")
        .await
        .unwrap();
    hosts::upsert_compute_node(
        &mut conn,
        &hosts::NodeReport {
            uuid: uuid.clone(),
            host: host.into(),
            hypervisor_hostname: host.into(),
            hypervisor_type: "mica".into(),
            hypervisor_version: 1,
            host_ip: "192.0.2.10".into(),
            cpu_info: json!({"arch": "x86_64", "model": "host"}).to_string(),
            vcpus: 8,
            memory_mb: 16384,
            local_gb: 100,
            running_vms: 0,
        },
    )
    .await
    .unwrap();
    uuid
}

/// Every cast the conductor topic receives.
#[derive(Default, Clone)]
struct Casts(Arc<Mutex<Vec<(String, Value)>>>);

impl Casts {
    fn take(&self) -> Vec<(String, Value)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

async fn listen_as_conductor(env: &Env) -> (mica_rpc::Server, Casts) {
    use mica_rpc::conductor::{RunInstanceAction, ScheduleAndBuild};
    let rpc = mica_rpc::Rpc::connect(&env.cloud.config.messaging.transport_url)
        .await
        .unwrap();
    let casts = Casts::default();
    let (a, b) = (casts.clone(), casts.clone());
    let d = mica_rpc::Dispatcher::new(mica_rpc::conductor::VERSION)
        .handle_method::<ScheduleAndBuild>(move |_ctx, req| {
            let a = a.clone();
            async move {
                a.0.lock().unwrap().push((
                    "schedule_and_build".into(),
                    serde_json::to_value(req).unwrap(),
                ));
                Ok::<_, mica_rpc::RemoteError>(())
            }
        })
        .handle_method::<RunInstanceAction>(move |_ctx, req| {
            let b = b.clone();
            async move {
                b.0.lock().unwrap().push((
                    "run_instance_action".into(),
                    serde_json::to_value(req).unwrap(),
                ));
                Ok::<_, mica_rpc::RemoteError>(())
            }
        });
    let server = rpc
        .serve(
            [mica_rpc::Subscription::Topic(mica_rpc::Topic::conductor())],
            d,
        )
        .await
        .unwrap();
    (server, casts)
}

async fn wait_for_casts(casts: &Casts, n: usize) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(casts.take());
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    got
}

// ---- discovery and microversions -------------------------------------------------------------

async fn discovery_and_microversions(backend: Backend) {
    let env = Env::start(backend).await;
    // No token needed for the version documents.
    let v: Value = env
        .http
        .get(format!("{}/v2.1", env.compute))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doc = &v["version"];
    assert_eq!(doc["id"], "v2.1");
    assert_eq!(doc["status"], "CURRENT");
    assert_eq!(doc["version"], format!("2.{MAX}"));
    assert_eq!(doc["min_version"], "2.1");
    assert_eq!(doc["links"][0]["rel"], "self");
    assert!(
        doc["links"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with("/v2.1/")
    );
    let r = env
        .http
        .get(format!("{}/", env.compute))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let root: Value = r.json().await.unwrap();
    assert_eq!(root["versions"][0]["id"], "v2.1");

    let admin = env.admin().await;
    // Echoed with Vary, in both headers.
    let r = env
        .nova(&admin, Method::GET, "/flavors", Some(47), None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["openstack-api-version"], "compute 2.47");
    assert_eq!(r.headers()["x-openstack-nova-api-version"], "2.47");
    let vary = r.headers()["vary"].to_str().unwrap().to_lowercase();
    assert!(
        vary.contains("openstack-api-version") && vary.contains("x-openstack-nova-api-version"),
        "{vary}"
    );
    // The legacy header alone; none at all means 2.1; latest means the max.
    let r = env
        .http
        .get(format!("{}/v2.1/flavors", env.compute))
        .header("x-auth-token", &admin.token)
        .header("x-openstack-nova-api-version", "2.10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["openstack-api-version"], "compute 2.10");
    let r = env.nova(&admin, Method::GET, "/flavors", None, None).await;
    assert_eq!(r.headers()["x-openstack-nova-api-version"], "2.1");
    let r = env
        .http
        .get(format!("{}/v2.1/flavors", env.compute))
        .header("x-auth-token", &admin.token)
        .header("openstack-api-version", "compute latest")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["openstack-api-version"],
        format!("compute 2.{MAX}")
    );
    // Out of range: 406; malformed: 400.
    let r = env
        .nova(&admin, Method::GET, "/flavors", Some(MAX + 1), None)
        .await;
    let m = nova_error(r, 406, "notAcceptable").await;
    assert!(m.contains("maximum is 2.96"), "{m}");
    let r = env
        .http
        .get(format!("{}/v2.1/flavors", env.compute))
        .header("x-auth-token", &admin.token)
        .header("openstack-api-version", "compute 2.x")
        .send()
        .await
        .unwrap();
    nova_error(r, 400, "badRequest").await;
    // Errors are Nova's bodies; no token is 401.
    let r = env
        .http
        .get(format!("{}/v2.1/servers", env.compute))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = env
        .nova(&admin, Method::GET, "/servers/nope", Some(MAX), None)
        .await;
    nova_error(r, 404, "itemNotFound").await;
    env.stop().await;
}

// ---- server fields ---------------------------------------------------------------------------------

const BASE_FIELDS: [&str; 27] = [
    "id",
    "name",
    "status",
    "tenant_id",
    "user_id",
    "metadata",
    "hostId",
    "image",
    "flavor",
    "created",
    "updated",
    "addresses",
    "accessIPv4",
    "accessIPv6",
    "links",
    "OS-DCF:diskConfig",
    "progress",
    "OS-EXT-AZ:availability_zone",
    "config_drive",
    "key_name",
    "OS-SRV-USG:launched_at",
    "OS-SRV-USG:terminated_at",
    "security_groups",
    "OS-EXT-STS:task_state",
    "OS-EXT-STS:vm_state",
    "OS-EXT-STS:power_state",
    "os-extended-volumes:volumes_attached",
];
const ADMIN_21: [&str; 3] = [
    "OS-EXT-SRV-ATTR:host",
    "OS-EXT-SRV-ATTR:instance_name",
    "OS-EXT-SRV-ATTR:hypervisor_hostname",
];
const ADMIN_23: [&str; 7] = [
    "OS-EXT-SRV-ATTR:hostname",
    "OS-EXT-SRV-ATTR:kernel_id",
    "OS-EXT-SRV-ATTR:launch_index",
    "OS-EXT-SRV-ATTR:ramdisk_id",
    "OS-EXT-SRV-ATTR:reservation_id",
    "OS-EXT-SRV-ATTR:root_device_name",
    "OS-EXT-SRV-ATTR:user_data",
];
const NEWER: [&str; 7] = [
    "locked",
    "description",
    "tags",
    "trusted_image_certificates",
    "server_groups",
    "locked_reason",
    "pinned_availability_zone",
];

async fn server_fields_by_microversion(backend: Backend) {
    let env = Env::start(backend).await;
    let fx = fixture(&env).await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    // 2.1: networks may be left out; the flavor is a link.
    let body = env
        .nova_ok(
            &alice,
            Method::POST,
            "/servers",
            1,
            Some(
                json!({"server": {"name": "old", "imageRef": fx.image, "flavorRef": fx.flavor,
                "metadata": {"a": "b"}}}),
            ),
            202,
        )
        .await;
    let s = &body["server"];
    assert_eq!(
        keys(s),
        set(&[
            "id",
            "links",
            "OS-DCF:diskConfig",
            "security_groups",
            "adminPass"
        ])
    );
    assert_eq!(s["security_groups"], json!([{"name": "default"}]));
    let id = s["id"].as_str().unwrap().to_owned();
    // From 2.37 networks are required.
    let r = env
        .nova(
            &alice,
            Method::POST,
            "/servers",
            Some(37),
            Some(json!({"server": {"name": "x", "imageRef": fx.image, "flavorRef": fx.flavor}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;

    let member_21 = env
        .nova_ok(&alice, Method::GET, &format!("/servers/{id}"), 1, None, 200)
        .await["server"]
        .clone();
    assert_eq!(keys(&member_21), set(&BASE_FIELDS));
    assert_eq!(member_21["status"], "BUILD");
    assert_eq!(member_21["flavor"]["id"], fx.flavor);
    assert!(
        member_21["flavor"]["links"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/flavors/{}", fx.flavor))
    );
    assert_eq!(member_21["image"]["id"], fx.image);
    assert_eq!(member_21["addresses"], json!({}), "hidden while building");
    assert_eq!(member_21["progress"], 0);
    assert!(member_21["progress"].is_i64());
    assert!(member_21["OS-EXT-STS:power_state"].is_i64());
    assert_eq!(member_21["OS-EXT-STS:vm_state"], "building");
    assert_eq!(member_21["OS-EXT-STS:task_state"], "scheduling");
    assert_eq!(member_21["metadata"], json!({"a": "b"}));
    assert_eq!(member_21["hostId"], "");
    assert_eq!(member_21["accessIPv4"], "");
    assert_eq!(member_21["OS-SRV-USG:launched_at"], Value::Null);
    assert_eq!(member_21["os-extended-volumes:volumes_attached"], json!([]));
    assert!(member_21["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(member_21["links"][0]["rel"], "self");

    let member_max = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{id}"),
            MAX,
            None,
            200,
        )
        .await["server"]
        .clone();
    let mut want = set(&BASE_FIELDS);
    want.extend(set(&NEWER));
    want.insert("OS-EXT-SRV-ATTR:hostname".into());
    assert_eq!(keys(&member_max), want);
    assert_eq!(member_max["locked"], false);
    assert!(member_max["locked"].is_boolean());
    assert_eq!(member_max["tags"], json!([]));
    assert_eq!(member_max["server_groups"], json!([]));
    assert_eq!(
        member_max["description"], "old",
        "before 2.19 the description is the name"
    );
    assert_eq!(member_max["OS-EXT-SRV-ATTR:hostname"], "old");
    assert_eq!(member_max["pinned_availability_zone"], Value::Null);
    let f = &member_max["flavor"];
    assert_eq!(
        keys(f),
        set(&[
            "vcpus",
            "ram",
            "disk",
            "ephemeral",
            "swap",
            "original_name",
            "extra_specs"
        ])
    );
    assert_eq!(f["ram"], 512);
    assert!(f["vcpus"].is_i64() && f["swap"].is_i64());
    assert_eq!(f["original_name"], "m1.tiny");

    // Admins see the extended attributes and host_status.
    let admin_21 = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            &format!("/servers/{id}"),
            1,
            None,
            200,
        )
        .await["server"]
        .clone();
    let mut want = set(&BASE_FIELDS);
    want.extend(set(&ADMIN_21));
    assert_eq!(keys(&admin_21), want);
    let admin_max = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            &format!("/servers/{id}"),
            MAX,
            None,
            200,
        )
        .await["server"]
        .clone();
    let mut want = set(&BASE_FIELDS);
    want.extend(set(&ADMIN_21));
    want.extend(set(&ADMIN_23));
    want.extend(set(&NEWER));
    want.insert("host_status".into());
    assert_eq!(keys(&admin_max), want);
    assert!(
        admin_max["OS-EXT-SRV-ATTR:instance_name"]
            .as_str()
            .unwrap()
            .starts_with("instance-")
    );
    assert_eq!(admin_max["OS-EXT-SRV-ATTR:launch_index"], 0);
    assert!(
        admin_max["OS-EXT-SRV-ATTR:reservation_id"]
            .as_str()
            .unwrap()
            .starts_with("r-")
    );
    assert_eq!(admin_max["host_status"], "");

    // Update: before 2.75 a short view, from 2.75 the full one.
    let u = env
        .nova_ok(
            &alice,
            Method::PUT,
            &format!("/servers/{id}"),
            74,
            Some(json!({"server": {"name": "renamed", "description": "d"}})),
            200,
        )
        .await;
    assert!(u["server"].get("OS-EXT-STS:vm_state").is_none());
    assert_eq!(u["server"]["name"], "renamed");
    assert_eq!(u["server"]["description"], "d");
    let u = env
        .nova_ok(
            &alice,
            Method::PUT,
            &format!("/servers/{id}"),
            MAX,
            Some(json!({"server": {"description": null}})),
            200,
        )
        .await;
    assert_eq!(u["server"]["OS-EXT-STS:vm_state"], "building");
    assert_eq!(u["server"]["description"], Value::Null);
    let r = env
        .nova(
            &alice,
            Method::PUT,
            &format!("/servers/{id}"),
            Some(18),
            Some(json!({"server": {"description": "x"}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;

    // An ERROR server shows its fault; the details only to admins for 500s.
    force_state(&env, &id, vm::ERROR, None).await;
    inst::record_fault(
        env.cloud.app.db.pool(),
        &id,
        500,
        "No valid host was found.",
        "all hosts failed",
        None,
    )
    .await
    .unwrap();
    let s = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{id}"),
            MAX,
            None,
            200,
        )
        .await["server"]
        .clone();
    assert_eq!(s["status"], "ERROR");
    assert_eq!(s["fault"]["code"], 500);
    assert_eq!(s["fault"]["message"], "No valid host was found.");
    assert!(s["fault"].get("details").is_none());
    assert!(s.get("progress").is_none(), "no progress in ERROR");
    let s = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            &format!("/servers/{id}"),
            MAX,
            None,
            200,
        )
        .await["server"]
        .clone();
    assert_eq!(s["fault"]["details"], "all hosts failed");

    // 2.47 flavor embedding, with a network: addresses after BUILD.
    let shared = env
        .neutron(&alice, Method::GET, "/networks", None)
        .await
        .json::<Value>()
        .await
        .unwrap()["networks"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id2 = create_server(
        &env,
        &alice,
        &fx,
        "withnet",
        json!({"networks": [{"uuid": shared}], "tags": ["t1"]}),
    )
    .await;
    force_state(&env, &id2, vm::ACTIVE, None).await;
    let s = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{id2}"),
            MAX,
            None,
            200,
        )
        .await["server"]
        .clone();
    let addrs = s["addresses"]["shared"].as_array().unwrap();
    assert_eq!(addrs.len(), 1);
    assert_eq!(addrs[0]["version"], 4);
    assert!(addrs[0]["addr"].as_str().unwrap().starts_with("10.0.0."));
    assert_eq!(addrs[0]["OS-EXT-IPS:type"], "fixed");
    assert_eq!(s["tags"], json!(["t1"]));
    assert_eq!(s["status"], "ACTIVE");
    // Tags only from 2.52 at create.
    let r = env
        .nova(&alice, Method::POST, "/servers", Some(51),
            Some(json!({"server": {"name": "t", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none", "tags": ["x"]}})))
        .await;
    nova_error(r, 400, "badRequest").await;
    env.stop().await;
}

// ---- lists ------------------------------------------------------------------------------------------

async fn lists_filter_sort_and_page(backend: Backend) {
    let env = Env::start(backend).await;
    let fx = fixture(&env).await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let bob = env.user_with_role("p2", "bob", "member").await;
    let mut ids = Vec::new();
    for n in 0..7 {
        let tags = if n % 2 == 0 {
            json!(["even"])
        } else {
            json!(["odd"])
        };
        ids.push(
            create_server(
                &env,
                &alice,
                &fx,
                &format!("web-{n}"),
                json!({"tags": tags}),
            )
            .await,
        );
    }
    create_server(&env, &alice, &fx, "db-0", json!({})).await;
    create_server(&env, &bob, &fx, "web-bob", json!({})).await;

    // Paging by links, newest first by default.
    let mut seen = Vec::new();
    let mut url = "/servers/detail?limit=3".to_owned();
    loop {
        let page = env.nova_ok(&alice, Method::GET, &url, MAX, None, 200).await;
        let servers = page["servers"].as_array().unwrap();
        seen.extend(servers.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        match page.get("servers_links") {
            Some(l) => {
                assert_eq!(l[0]["rel"], "next");
                let href = l[0]["href"].as_str().unwrap();
                assert!(
                    href.contains("marker=") && href.contains("limit=3"),
                    "{href}"
                );
                url = href.split("/v2.1").nth(1).unwrap().to_owned();
                assert_eq!(servers.len(), 3);
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 8);
    assert_eq!(
        seen[0].as_str(),
        env.nova_ok(&alice, Method::GET, "/servers?limit=1", MAX, None, 200)
            .await["servers"][0]["id"]
            .as_str()
            .unwrap()
    );
    // The brief list: ids, names and links only.
    let brief = env
        .nova_ok(&alice, Method::GET, "/servers", MAX, None, 200)
        .await;
    assert_eq!(keys(&brief["servers"][0]), set(&["id", "name", "links"]));
    assert!(brief.get("servers_links").is_none());

    // Filters.
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    let by_regex = env
        .nova_ok(
            &alice,
            Method::GET,
            "/servers/detail?name=%5Eweb-%5B0-2%5D%24",
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(names(&by_regex), ["web-0", "web-1", "web-2"]);
    let plain = env
        .nova_ok(&alice, Method::GET, "/servers?name=DB", MAX, None, 200)
        .await;
    assert_eq!(names(&plain), ["db-0"], "case-insensitive substring");
    // `_` in a plain name is a character, not SQL's any-one wildcard.
    let underscore = env
        .nova_ok(&alice, Method::GET, "/servers?name=web_1", MAX, None, 200)
        .await;
    assert_eq!(names(&underscore), Vec::<String>::new());
    // A plain name filter pages like any other list.
    let first_page = env
        .nova_ok(
            &alice,
            Method::GET,
            "/servers?name=WEB&limit=3",
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(first_page["servers"].as_array().unwrap().len(), 3);
    assert!(
        first_page["servers_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("name=WEB"),
        "{first_page}"
    );
    let tagged = env
        .nova_ok(&alice, Method::GET, "/servers?tags=even", MAX, None, 200)
        .await;
    assert_eq!(names(&tagged), ["web-0", "web-2", "web-4", "web-6"]);
    let not_tagged = env
        .nova_ok(
            &alice,
            Method::GET,
            "/servers?not-tags-any=even,odd",
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(names(&not_tagged), ["db-0"]);
    force_state(&env, &ids[3], vm::ACTIVE, None).await;
    let active = env
        .nova_ok(
            &alice,
            Method::GET,
            "/servers?status=ACTIVE",
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(names(&active), ["web-3"]);
    let build = env
        .nova_ok(
            &alice,
            Method::GET,
            "/servers?status=BUILD&status=ACTIVE",
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(build["servers"].as_array().unwrap().len(), 8);
    let r = env
        .nova(&alice, Method::GET, "/servers?status=NOPE", Some(MAX), None)
        .await;
    assert_eq!(
        nova_error(r, 400, "badRequest").await,
        "Invalid status value"
    );
    let old = env
        .nova_ok(&alice, Method::GET, "/servers?status=NOPE", 37, None, 200)
        .await;
    assert_eq!(
        old["servers"],
        json!([]),
        "before 2.38 an unknown status matches nothing"
    );
    let by_image = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers?image={}", fx.image),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(by_image["servers"].as_array().unwrap().len(), 8);
    let by_flavor = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers?flavor={}", fx.small),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(by_flavor["servers"], json!([]));
    // Sorting.
    let sorted = env
        .nova_ok(
            &alice,
            Method::GET,
            "/servers/detail?sort_key=display_name&sort_dir=asc&limit=2",
            MAX,
            None,
            200,
        )
        .await;
    let order: Vec<&str> = sorted["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["db-0", "web-0"]);
    let r = env
        .nova(
            &alice,
            Method::GET,
            "/servers?sort_key=host",
            Some(MAX),
            None,
        )
        .await;
    nova_error(r, 403, "forbidden").await;
    // Unknown parameters: 400 from 2.75, ignored before.
    let r = env
        .nova(&alice, Method::GET, "/servers?foo=1", Some(75), None)
        .await;
    nova_error(r, 400, "badRequest").await;
    env.nova_ok(&alice, Method::GET, "/servers?foo=1", 74, None, 200)
        .await;
    // Deleted servers: admins only; all_tenants: admins only (others ignore it).
    // `deleted` is not a member's filter: dropped, as Nova does.
    let r = env
        .nova(
            &alice,
            Method::GET,
            "/servers?status=DELETED",
            Some(MAX),
            None,
        )
        .await;
    assert_eq!(
        nova_error(r, 403, "forbidden").await,
        "Only administrators may list deleted instances"
    );
    let own = env
        .nova_ok(&alice, Method::GET, "/servers?deleted=true", MAX, None, 200)
        .await;
    assert_eq!(own["servers"].as_array().unwrap().len(), 8);
    // all_tenants: admins only (Nova's get_all_tenants policy).
    let r = env
        .nova(
            &alice,
            Method::GET,
            "/servers?all_tenants=1",
            Some(MAX),
            None,
        )
        .await;
    nova_error(r, 403, "forbidden").await;
    let all = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            "/servers?all_tenants=1",
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(all["servers"].as_array().unwrap().len(), 9);
    let r = env
        .nova(&alice, Method::GET, "/servers?marker=nope", Some(MAX), None)
        .await;
    nova_error(r, 400, "badRequest").await;
    // Changes-since sees deleted servers too.
    let since = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{}", ids[0]),
            MAX,
            None,
            200,
        )
        .await["server"]["created"]
        .clone();
    env.nova_ok(
        &alice,
        Method::DELETE,
        &format!("/servers/{}", ids[0]),
        MAX,
        None,
        204,
    )
    .await;
    let changed = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/detail?changes-since={}", since.as_str().unwrap()),
            MAX,
            None,
            200,
        )
        .await;
    let deleted: Vec<&Value> = changed["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "DELETED")
        .collect();
    assert_eq!(deleted.len(), 1);
    env.stop().await;
}

// ---- the state table ----------------------------------------------------------------------------------

/// (action body, vm_states that allow it, success status)
fn table(small: &str) -> Vec<(&'static str, Value, Vec<&'static str>, u16)> {
    vec![
        (
            "stop",
            json!({"os-stop": null}),
            vec![vm::ACTIVE, vm::ERROR],
            202,
        ),
        ("start", json!({"os-start": null}), vec![vm::STOPPED], 202),
        (
            "reboot",
            json!({"reboot": {"type": "SOFT"}}),
            vec![vm::ACTIVE],
            202,
        ),
        (
            "reboot",
            json!({"reboot": {"type": "HARD"}}),
            vec![
                vm::ACTIVE,
                vm::STOPPED,
                vm::PAUSED,
                vm::SUSPENDED,
                vm::ERROR,
            ],
            202,
        ),
        ("pause", json!({"pause": null}), vec![vm::ACTIVE], 202),
        ("unpause", json!({"unpause": null}), vec![vm::PAUSED], 202),
        ("suspend", json!({"suspend": null}), vec![vm::ACTIVE], 202),
        ("resume", json!({"resume": null}), vec![vm::SUSPENDED], 202),
        (
            "resize",
            json!({"resize": {"flavorRef": small}}),
            vec![vm::ACTIVE, vm::STOPPED],
            501,
        ),
        (
            "migrate",
            json!({"migrate": null}),
            vec![vm::ACTIVE, vm::STOPPED],
            501,
        ),
        (
            "confirmResize",
            json!({"confirmResize": null}),
            vec![vm::RESIZED],
            501,
        ),
        (
            "revertResize",
            json!({"revertResize": null}),
            vec![vm::RESIZED],
            501,
        ),
        (
            "rescue",
            json!({"rescue": {}}),
            vec![vm::ACTIVE, vm::STOPPED, vm::ERROR],
            501,
        ),
        (
            "unrescue",
            json!({"unrescue": null}),
            vec![vm::RESCUED],
            501,
        ),
        (
            "createImage",
            json!({"createImage": {"name": "snap"}}),
            vec![vm::ACTIVE, vm::STOPPED, vm::PAUSED, vm::SUSPENDED],
            501,
        ),
        (
            "evacuate",
            json!({"evacuate": {}}),
            vec![vm::ACTIVE, vm::STOPPED, vm::ERROR],
            501,
        ),
    ]
}

async fn illegal_transitions_are_409(backend: Backend) {
    let env = Env::start(backend).await;
    let fx = fixture(&env).await;
    let (_server, casts) = listen_as_conductor(&env).await;
    let id = create_server(&env, &fx.admin, &fx, "s", json!({})).await;
    wait_for_casts(&casts, 1).await;
    let states = [
        vm::ACTIVE,
        vm::STOPPED,
        vm::PAUSED,
        vm::SUSPENDED,
        vm::RESCUED,
        vm::RESIZED,
        vm::ERROR,
        vm::BUILDING,
    ];
    let mut refused = 0;
    let mut accepted = 0;
    for (name, body, allowed, ok) in table(&fx.small) {
        for state in states {
            // A host that is down, for evacuate.
            force_state(&env, &id, state, Some("gone-host")).await;
            let r = env
                .nova(
                    &fx.admin,
                    Method::POST,
                    &format!("/servers/{id}/action"),
                    Some(MAX),
                    Some(body.clone()),
                )
                .await;
            if allowed.contains(&state) {
                assert_eq!(
                    r.status().as_u16(),
                    ok,
                    "{name} from {state}: {}",
                    r.text().await.unwrap()
                );
                accepted += 1;
            } else {
                let m = nova_error(r, 409, "conflictingRequest").await;
                assert_eq!(
                    m,
                    format!("Cannot '{name}' instance {id} while it is in vm_state {state}"),
                    "{body}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((refused, accepted), (98, 30));
    // Accepted power actions were recorded and cast to the conductor.
    let got = wait_for_casts(&casts, 13).await;
    let actions: Vec<String> = got
        .iter()
        .filter(|(m, _)| m == "run_instance_action")
        .map(|(_, v)| v["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions.len(), 13, "{actions:?}");
    assert!(actions.contains(&"stop".to_owned()) && actions.contains(&"reboot".to_owned()));
    let acts = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            &format!("/servers/{id}/os-instance-actions"),
            MAX,
            None,
            200,
        )
        .await;
    let names: Vec<&str> = acts["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(names.last(), Some(&"create"));
    assert_eq!(names.iter().filter(|a| **a == "stop").count(), 2);

    // A task in progress refuses another action, with the task in the message.
    force_state(&env, &id, vm::ACTIVE, Some("gone-host")).await;
    env.nova_ok(
        &fx.admin,
        Method::POST,
        &format!("/servers/{id}/action"),
        MAX,
        Some(json!({"os-stop": null})),
        202,
    )
    .await;
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/servers/{id}/action"),
            Some(MAX),
            Some(json!({"pause": null})),
        )
        .await;
    assert_eq!(
        nova_error(r, 409, "conflictingRequest").await,
        format!("Cannot 'pause' instance {id} while it is in task_state powering-off")
    );
    // Never launched: launched_at is checked after the states.
    force_state(&env, &id, vm::ERROR, None).await;
    inst::update_instance(
        env.cloud.app.db.pool(),
        &id,
        &Expect::default(),
        &Change {
            launched_at: Some(None),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/servers/{id}/action"),
            Some(MAX),
            Some(json!({"os-stop": null})),
        )
        .await;
    assert_eq!(
        nova_error(r, 409, "conflictingRequest").await,
        format!("Cannot 'stop' instance {id} while it is in launched_at None")
    );
    // Same flavor resize is 400; evacuate from a live host is 400.
    force_state(&env, &id, vm::ACTIVE, Some("live-host")).await;
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/servers/{id}/action"),
            Some(MAX),
            Some(json!({"resize": {"flavorRef": fx.flavor}})),
        )
        .await;
    assert_eq!(
        nova_error(r, 400, "badRequest").await,
        "When resizing, instances must change flavor!"
    );
    fake_host(&env, &fx.admin, "live-host").await;
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/servers/{id}/action"),
            Some(MAX),
            Some(json!({"evacuate": {}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    // Locked: members get 409, admins pass.
    let alice = env.user_with_role("p1", "alice", "member").await;
    let mine = create_server(&env, &alice, &fx, "locked", json!({})).await;
    force_state(&env, &mine, vm::ACTIVE, Some("live-host")).await;
    env.nova_ok(
        &alice,
        Method::POST,
        &format!("/servers/{mine}/action"),
        MAX,
        Some(json!({"lock": {"locked_reason": "why"}})),
        202,
    )
    .await;
    let s = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{mine}"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(s["server"]["locked"], true);
    assert_eq!(s["server"]["locked_reason"], "why");
    let r = env
        .nova(
            &alice,
            Method::POST,
            &format!("/servers/{mine}/action"),
            Some(MAX),
            Some(json!({"os-stop": null})),
        )
        .await;
    assert_eq!(
        nova_error(r, 409, "conflictingRequest").await,
        format!("Instance {mine} is locked")
    );
    let r = env
        .nova(
            &alice,
            Method::DELETE,
            &format!("/servers/{mine}"),
            Some(MAX),
            None,
        )
        .await;
    nova_error(r, 409, "conflictingRequest").await;
    env.nova_ok(
        &alice,
        Method::POST,
        &format!("/servers/{mine}/action"),
        MAX,
        Some(json!({"unlock": null})),
        202,
    )
    .await;
    // Delete from any state: a hosted server goes through the conductor.
    casts.take();
    env.nova_ok(
        &alice,
        Method::DELETE,
        &format!("/servers/{mine}"),
        MAX,
        None,
        204,
    )
    .await;
    let got = wait_for_casts(&casts, 1).await;
    assert_eq!(got[0].1["action"], "delete");
    assert_eq!(got[0].1["instance_uuid"], mine.as_str());
    let s = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{mine}"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(s["server"]["OS-EXT-STS:task_state"], "deleting");
    // Unknown actions are 400.
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/servers/{id}/action"),
            Some(MAX),
            Some(json!({"fly": null})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    env.stop().await;
}

// ---- quotas ------------------------------------------------------------------------------------------

async fn quotas_are_enforced_with_novas_messages(backend: Backend) {
    let env = Env::start(backend).await;
    let fx = fixture(&env).await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let q = env
        .nova_ok(
            &fx.admin,
            Method::PUT,
            &format!("/os-quota-sets/{}", alice.project_id),
            56,
            Some(json!({"quota_set": {"instances": 2, "cores": 40}})),
            200,
        )
        .await;
    assert_eq!(q["quota_set"]["instances"], 2);
    assert!(q["quota_set"].get("id").is_none());
    assert_eq!(q["quota_set"]["injected_files"], 5, "shown until 2.57");
    create_server(&env, &alice, &fx, "a", json!({})).await;
    create_server(&env, &alice, &fx, "b", json!({})).await;
    let r = env
        .nova(&alice, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "c", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none"}})))
        .await;
    assert_eq!(
        nova_error(r, 403, "forbidden").await,
        "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances"
    );
    // Cores: a flavor too big for what is left.
    env.nova_ok(
        &fx.admin,
        Method::PUT,
        &format!("/os-quota-sets/{}", alice.project_id),
        56,
        Some(json!({"quota_set": {"instances": 10, "cores": 3}})),
        200,
    )
    .await;
    let r = env
        .nova(&alice, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "c", "imageRef": fx.image, "flavorRef": fx.small, "networks": "none"}})))
        .await;
    assert_eq!(
        nova_error(r, 403, "forbidden").await,
        "Quota exceeded for cores: Requested 2, but already used 2 of 3 cores"
    );
    // min_count..max_count: as many as fit.
    let body = env
        .nova_ok(&alice, Method::POST, "/servers", MAX,
            Some(json!({"server": {"name": "many", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none",
                "min_count": 1, "max_count": 5, "return_reservation_id": true}})), 202)
        .await;
    let resv = body["reservation_id"].as_str().unwrap();
    let made = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers?reservation_id={resv}"),
            MAX,
            None,
            200,
        )
        .await;
    let mut names: Vec<String> = made["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["many"], "3 cores, 2 used: one more fits");
    // Lowering below usage is refused without force.
    let r = env
        .nova(
            &fx.admin,
            Method::PUT,
            &format!("/os-quota-sets/{}", alice.project_id),
            Some(56),
            Some(json!({"quota_set": {"instances": 1}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    env.nova_ok(
        &fx.admin,
        Method::PUT,
        &format!("/os-quota-sets/{}", alice.project_id),
        56,
        Some(json!({"quota_set": {"instances": 1, "force": true}})),
        200,
    )
    .await;
    // Usage in quota details and limits.
    let d = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/os-quota-sets/{}/detail", alice.project_id),
            56,
            None,
            200,
        )
        .await;
    assert_eq!(
        d["quota_set"]["instances"],
        json!({"in_use": 3, "limit": 1, "reserved": 0})
    );
    assert_eq!(d["quota_set"]["cores"]["in_use"], 3);
    let l = env
        .nova_ok(&alice, Method::GET, "/limits", 1, None, 200)
        .await;
    assert_eq!(l["limits"]["absolute"]["totalInstancesUsed"], 3);
    assert_eq!(l["limits"]["absolute"]["maxTotalInstances"], 1);
    assert_eq!(l["limits"]["rate"], json!([]));
    let l = env
        .nova_ok(&alice, Method::GET, "/limits", MAX, None, 200)
        .await;
    assert!(l["limits"]["absolute"].get("maxPersonality").is_none());
    let d = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/os-quota-sets/{}/defaults", alice.project_id),
            56,
            None,
            200,
        )
        .await;
    assert_eq!(d["quota_set"]["instances"], 10);
    // Metadata items.
    env.nova_ok(
        &fx.admin,
        Method::PUT,
        &format!("/os-quota-sets/{}", alice.project_id),
        56,
        Some(json!({"quota_set": {"instances": 10, "cores": 100, "metadata_items": 1}})),
        200,
    )
    .await;
    let r = env
        .nova(&alice, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "m", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none",
                "metadata": {"a": "1", "b": "2"}}})))
        .await;
    nova_error(r, 403, "forbidden").await;
    // Key pairs and server groups.
    env.nova_ok(
        &fx.admin,
        Method::PUT,
        &format!("/os-quota-sets/{}", alice.project_id),
        56,
        Some(json!({"quota_set": {"key_pairs": 1, "server_groups": 1}})),
        200,
    )
    .await;
    env.nova_ok(
        &alice,
        Method::POST,
        "/os-keypairs",
        10,
        Some(json!({"keypair": {"name": "k1"}})),
        201,
    )
    .await;
    let r = env
        .nova(
            &alice,
            Method::POST,
            "/os-keypairs",
            Some(10),
            Some(json!({"keypair": {"name": "k2"}})),
        )
        .await;
    assert_eq!(
        nova_error(r, 403, "forbidden").await,
        "Quota exceeded, too many key pairs."
    );
    env.nova_ok(
        &alice,
        Method::POST,
        "/os-server-groups",
        64,
        Some(json!({"server_group": {"name": "g", "policy": "affinity"}})),
        200,
    )
    .await;
    let r = env
        .nova(
            &alice,
            Method::POST,
            "/os-server-groups",
            Some(64),
            Some(json!({"server_group": {"name": "h", "policy": "affinity"}})),
        )
        .await;
    assert_eq!(
        nova_error(r, 403, "forbidden").await,
        "Quota exceeded, too many server groups."
    );
    // Quota classes: the `default` class overrides [quota]; its fields
    // follow 2.50 (server groups in, network proxies out).
    let c = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            "/os-quota-class-sets/default",
            1,
            None,
            200,
        )
        .await;
    assert_eq!(c["quota_class_set"]["floating_ips"], 10);
    assert!(c["quota_class_set"].get("server_groups").is_none());
    let c = env
        .nova_ok(
            &fx.admin,
            Method::PUT,
            "/os-quota-class-sets/default",
            56,
            Some(json!({"quota_class_set": {"instances": 7}})),
            200,
        )
        .await;
    assert_eq!(c["quota_class_set"]["instances"], 7);
    assert!(c["quota_class_set"].get("floating_ips").is_none());
    assert_eq!(c["quota_class_set"]["server_groups"], 10);
    let d = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/os-quota-sets/{}/defaults", alice.project_id),
            56,
            None,
            200,
        )
        .await;
    assert_eq!(d["quota_set"]["instances"], 7);
    let r = env
        .nova(
            &alice,
            Method::GET,
            "/os-quota-class-sets/default",
            Some(56),
            None,
        )
        .await;
    nova_error(r, 403, "forbidden").await;
    // Members can't change quotas.
    let r = env
        .nova(
            &alice,
            Method::PUT,
            &format!("/os-quota-sets/{}", alice.project_id),
            Some(56),
            Some(json!({"quota_set": {"instances": 100}})),
        )
        .await;
    nova_error(r, 403, "forbidden").await;
    env.stop().await;
}

// ---- visibility and admin APIs -------------------------------------------------------------------------

async fn projects_are_isolated_and_admin_apis_guarded(backend: Backend) {
    let env = Env::start(backend).await;
    let fx = fixture(&env).await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let bob = env.user_with_role("p2", "bob", "member").await;
    let id = create_server(&env, &alice, &fx, "mine", json!({})).await;
    // Another project's server is 404 everywhere.
    for (m, path, body) in [
        (Method::GET, format!("/servers/{id}"), None),
        (
            Method::PUT,
            format!("/servers/{id}"),
            Some(json!({"server": {"name": "x"}})),
        ),
        (Method::DELETE, format!("/servers/{id}"), None),
        (
            Method::POST,
            format!("/servers/{id}/action"),
            Some(json!({"os-stop": null})),
        ),
        (Method::GET, format!("/servers/{id}/metadata"), None),
        (
            Method::GET,
            format!("/servers/{id}/os-instance-actions"),
            None,
        ),
        (Method::GET, format!("/servers/{id}/tags"), None),
    ] {
        let r = env.nova(&bob, m.clone(), &path, Some(MAX), body).await;
        nova_error(r, 404, "itemNotFound").await;
    }
    let listed = env
        .nova_ok(&bob, Method::GET, "/servers/detail", MAX, None, 200)
        .await;
    assert_eq!(listed["servers"], json!([]));
    // Admin-only APIs are 403 for members.
    for (m, path, body) in [
        (Method::GET, "/os-services".to_owned(), None),
        (Method::GET, "/os-hypervisors".to_owned(), None),
        (Method::GET, "/os-hypervisors/detail".to_owned(), None),
        (Method::GET, "/os-aggregates".to_owned(), None),
        (
            Method::POST,
            "/os-aggregates".to_owned(),
            Some(json!({"aggregate": {"name": "a"}})),
        ),
        (Method::GET, "/os-availability-zone/detail".to_owned(), None),
        (
            Method::POST,
            "/flavors".to_owned(),
            Some(json!({"flavor": {"name": "f", "ram": 1, "vcpus": 1, "disk": 0}})),
        ),
        (Method::DELETE, format!("/flavors/{}", fx.flavor), None),
        (
            Method::PUT,
            format!("/os-quota-sets/{}", alice.project_id),
            Some(json!({"quota_set": {"cores": 1}})),
        ),
        (
            Method::GET,
            format!("/os-quota-sets/{}", bob.project_id),
            None,
        ),
        (
            Method::POST,
            format!("/flavors/{}/os-extra_specs", fx.flavor),
            Some(json!({"extra_specs": {"a": "b"}})),
        ),
        (
            Method::GET,
            format!("/os-keypairs?user_id={}", bob.user_id),
            None,
        ),
    ] {
        let r = env.nova(&alice, m.clone(), &path, Some(MAX), body).await;
        nova_error(r, 403, "forbidden").await;
    }
    // Members may add their own zone:host? No: forcing a host is for admins.
    let r = env
        .nova(&alice, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "f", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none",
                "availability_zone": "nova:somehost"}})))
        .await;
    nova_error(r, 403, "forbidden").await;
    // Readers read, but don't create.
    let carol = env.user_with_role("p1", "carol", "reader").await;
    env.nova_ok(
        &carol,
        Method::GET,
        &format!("/servers/{id}"),
        MAX,
        None,
        200,
    )
    .await;
    let r = env
        .nova(&carol, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "r", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none"}})))
        .await;
    nova_error(r, 403, "forbidden").await;
    let r = env
        .nova(
            &carol,
            Method::DELETE,
            &format!("/servers/{id}"),
            Some(MAX),
            None,
        )
        .await;
    nova_error(r, 403, "forbidden").await;
    // Another project's private image can't boot.
    let img = upload_image(&env, &bob, "bobs", false).await;
    let r = env
        .nova(&alice, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "x", "imageRef": img, "flavorRef": fx.flavor, "networks": "none"}})))
        .await;
    assert_eq!(
        nova_error(r, 400, "badRequest").await,
        "Can not find requested image"
    );
    env.stop().await;
}

// ---- flavors, key pairs, server groups ------------------------------------------------------------------

async fn flavors_keypairs_and_groups(backend: Backend) {
    let env = Env::start(backend).await;
    let fx = fixture(&env).await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    // Flavors: types and fields by microversion.
    let f = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/flavors/{}", fx.flavor),
            1,
            None,
            200,
        )
        .await["flavor"]
        .clone();
    assert_eq!(f["swap"], "", "empty string before 2.75");
    assert!(f.get("description").is_none() && f.get("extra_specs").is_none());
    assert_eq!(f["os-flavor-access:is_public"], true);
    assert_eq!(f["rxtx_factor"], 1.0);
    let f = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/flavors/{}", fx.flavor),
            MAX,
            None,
            200,
        )
        .await["flavor"]
        .clone();
    assert_eq!(f["swap"], 0);
    assert_eq!(f["description"], Value::Null);
    assert_eq!(f["extra_specs"], json!({}));
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            "/flavors",
            Some(61),
            Some(json!({"flavor": {"name": "m1.tiny", "ram": 1, "vcpus": 1, "disk": 0}})),
        )
        .await;
    assert_eq!(
        nova_error(r, 409, "conflictingRequest").await,
        "Flavor with name m1.tiny already exists."
    );
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            "/flavors",
            Some(61),
            Some(json!({"flavor": {"name": "x", "ram": 0, "vcpus": 1, "disk": 0}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    // Extra specs: known keys validated from 2.86.
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/flavors/{}/os-extra_specs", fx.flavor),
            Some(86),
            Some(json!({"extra_specs": {"hw:cpu_policy": "fast"}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    env.nova_ok(
        &fx.admin,
        Method::POST,
        &format!("/flavors/{}/os-extra_specs", fx.flavor),
        85,
        Some(json!({"extra_specs": {"hw:cpu_policy": "fast"}})),
        200,
    )
    .await;
    env.nova_ok(&fx.admin, Method::POST, &format!("/flavors/{}/os-extra_specs", fx.flavor), 86,
        Some(json!({"extra_specs": {"hw:cpu_policy": "dedicated", "trait:HW_CPU_X86_AVX2": "required"}})), 200).await;
    let specs = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/flavors/{}/os-extra_specs", fx.flavor),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(specs["extra_specs"]["hw:cpu_policy"], "dedicated");
    let one = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/flavors/{}/os-extra_specs/hw:cpu_policy", fx.flavor),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(one, json!({"hw:cpu_policy": "dedicated"}));
    // Private flavors and access lists.
    env.nova_ok(&fx.admin, Method::POST, "/flavors", 61,
        Some(json!({"flavor": {"name": "private", "ram": 256, "vcpus": 1, "disk": 0, "id": "p1", "os-flavor-access:is_public": false}})), 200)
        .await;
    let r = env
        .nova(&alice, Method::GET, "/flavors/p1", Some(MAX), None)
        .await;
    nova_error(r, 404, "itemNotFound").await;
    let acc = env
        .nova_ok(
            &fx.admin,
            Method::POST,
            "/flavors/p1/action",
            MAX,
            Some(json!({"addTenantAccess": {"tenant": alice.project_id}})),
            200,
        )
        .await;
    assert_eq!(
        acc["flavor_access"][0]["tenant_id"],
        alice.project_id.as_str()
    );
    env.nova_ok(&alice, Method::GET, "/flavors/p1", MAX, None, 200)
        .await;
    let listed = env
        .nova_ok(&alice, Method::GET, "/flavors/detail", MAX, None, 200)
        .await;
    assert_eq!(listed["flavors"].as_array().unwrap().len(), 3);
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            "/flavors/p1/action",
            Some(MAX),
            Some(json!({"addTenantAccess": {"tenant": alice.project_id}})),
        )
        .await;
    nova_error(r, 409, "conflictingRequest").await;
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/flavors/{}/action", fx.flavor),
            Some(MAX),
            Some(json!({"addTenantAccess": {"tenant": "x"}})),
        )
        .await;
    nova_error(r, 409, "conflictingRequest").await;
    let page = env
        .nova_ok(&fx.admin, Method::GET, "/flavors?limit=1", MAX, None, 200)
        .await;
    assert!(
        page["flavors_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker=")
    );

    // Key pairs: generated (real) before 2.92, import, per user.
    let k = env
        .nova_ok(
            &alice,
            Method::POST,
            "/os-keypairs",
            10,
            Some(json!({"keypair": {"name": "gen"}})),
            201,
        )
        .await;
    assert!(
        k["keypair"]["private_key"]
            .as_str()
            .unwrap()
            .contains("BEGIN OPENSSH PRIVATE KEY")
    );
    assert_eq!(k["keypair"]["type"], "ssh");
    let r = env
        .nova(
            &alice,
            Method::POST,
            "/os-keypairs",
            Some(92),
            Some(json!({"keypair": {"name": "gen2"}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    let x = env
        .nova_ok(
            &alice,
            Method::POST,
            "/os-keypairs",
            10,
            Some(json!({"keypair": {"name": "cert", "type": "x509"}})),
            201,
        )
        .await;
    assert!(
        x["keypair"]["public_key"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let public = k["keypair"]["public_key"].as_str().unwrap();
    let imp = env
        .nova_ok(
            &alice,
            Method::POST,
            "/os-keypairs",
            1,
            Some(json!({"keypair": {"name": "imported", "public_key": public}})),
            200,
        )
        .await;
    assert!(imp["keypair"].get("type").is_none() && imp["keypair"].get("private_key").is_none());
    assert_eq!(imp["keypair"]["fingerprint"], k["keypair"]["fingerprint"]);
    let r = env
        .nova(
            &alice,
            Method::POST,
            "/os-keypairs",
            Some(10),
            Some(json!({"keypair": {"name": "bad", "public_key": "ssh-rsa nope"}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    let r = env
        .nova(
            &alice,
            Method::POST,
            "/os-keypairs",
            Some(10),
            Some(json!({"keypair": {"name": "gen"}})),
        )
        .await;
    assert_eq!(
        nova_error(r, 409, "conflictingRequest").await,
        "Key pair 'gen' already exists."
    );
    let r = env
        .nova(
            &alice,
            Method::POST,
            "/os-keypairs",
            Some(10),
            Some(json!({"keypair": {"name": "a@b"}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    env.nova_ok(
        &alice,
        Method::POST,
        "/os-keypairs",
        92,
        Some(json!({"keypair": {"name": "a@b.c", "public_key": public}})),
        201,
    )
    .await;
    let shown = env
        .nova_ok(&alice, Method::GET, "/os-keypairs/gen", 10, None, 200)
        .await["keypair"]
        .clone();
    assert!(shown["id"].is_i64());
    assert_eq!(shown["deleted"], false);
    let list = env
        .nova_ok(&alice, Method::GET, "/os-keypairs?limit=2", 35, None, 200)
        .await;
    assert_eq!(list["keypairs"].as_array().unwrap().len(), 2);
    assert!(
        list["keypairs_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker=")
    );
    let bob = env.user_with_role("p1", "bob", "member").await;
    let theirs = env
        .nova_ok(&bob, Method::GET, "/os-keypairs", 10, None, 200)
        .await;
    assert_eq!(theirs["keypairs"], json!([]), "key pairs are per user");
    let admins = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            &format!("/os-keypairs?user_id={}", alice.user_id),
            10,
            None,
            200,
        )
        .await;
    assert_eq!(admins["keypairs"].as_array().unwrap().len(), 4);
    // A key pair on a server; an unknown one is 400.
    let sid = create_server(&env, &alice, &fx, "keyed", json!({"key_name": "gen"})).await;
    let s = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{sid}"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(s["server"]["key_name"], "gen");
    let r = env
        .nova(&alice, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "k", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none", "key_name": "nope"}})))
        .await;
    assert_eq!(
        nova_error(r, 400, "badRequest").await,
        "Invalid key_name provided."
    );
    env.nova_ok(&alice, Method::DELETE, "/os-keypairs/gen", 2, None, 204)
        .await;
    env.nova_ok(&alice, Method::DELETE, "/os-keypairs/cert", 1, None, 202)
        .await;

    // Server groups: policies by microversion, rules, membership.
    let r = env
        .nova(
            &alice,
            Method::POST,
            "/os-server-groups",
            Some(14),
            Some(json!({"server_group": {"name": "g", "policies": ["soft-affinity"]}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    let g = env
        .nova_ok(
            &alice,
            Method::POST,
            "/os-server-groups",
            15,
            Some(json!({"server_group": {"name": "g", "policies": ["soft-affinity"]}})),
            200,
        )
        .await;
    assert_eq!(
        keys(&g["server_group"]),
        set(&[
            "id",
            "name",
            "members",
            "policies",
            "metadata",
            "project_id",
            "user_id"
        ])
    );
    let r = env
        .nova(&alice, Method::POST, "/os-server-groups", Some(64),
            Some(json!({"server_group": {"name": "h", "policy": "affinity", "rules": {"max_server_per_host": 2}}})))
        .await;
    nova_error(r, 400, "badRequest").await;
    let g = env
        .nova_ok(&alice, Method::POST, "/os-server-groups", 64,
            Some(json!({"server_group": {"name": "h", "policy": "anti-affinity", "rules": {"max_server_per_host": 2}}})), 200)
        .await;
    let gid = g["server_group"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        g["server_group"]["rules"],
        json!({"max_server_per_host": 2})
    );
    assert_eq!(
        keys(&g["server_group"]),
        set(&[
            "id",
            "name",
            "members",
            "policy",
            "rules",
            "project_id",
            "user_id"
        ])
    );
    let member = create_server(&env, &alice, &fx, "grouped", json!({})).await;
    let body = env
        .nova_ok(&alice, Method::POST, "/servers", MAX,
            Some(json!({"server": {"name": "grouped2", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none"},
                "os:scheduler_hints": {"group": gid}})), 202)
        .await;
    let grouped = body["server"]["id"].as_str().unwrap().to_owned();
    let shown = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/os-server-groups/{gid}"),
            64,
            None,
            200,
        )
        .await;
    assert_eq!(shown["server_group"]["members"], json!([grouped]));
    let s = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{grouped}"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(s["server"]["server_groups"], json!([gid]));
    let s = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{member}"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(s["server"]["server_groups"], json!([]));
    let r = env
        .nova(&alice, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "x", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none"},
                "os:scheduler_hints": {"group": uuid::Uuid::new_v4().to_string()}})))
        .await;
    nova_error(r, 400, "badRequest").await;
    env.nova_ok(
        &alice,
        Method::DELETE,
        &format!("/servers/{grouped}"),
        MAX,
        None,
        204,
    )
    .await;
    let shown = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/os-server-groups/{gid}"),
            64,
            None,
            200,
        )
        .await;
    assert_eq!(shown["server_group"]["members"], json!([]));
    env.nova_ok(
        &alice,
        Method::DELETE,
        &format!("/os-server-groups/{gid}"),
        64,
        None,
        204,
    )
    .await;
    env.stop().await;
}

// ---- metadata, tags, user data, instance actions -----------------------------------------------------

async fn server_subresources(backend: Backend) {
    let env = Env::start(backend).await;
    let fx = fixture(&env).await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let id = create_server(
        &env,
        &alice,
        &fx,
        "s",
        json!({"metadata": {"a": "1"}, "user_data": "aGVsbG8=", "description": "d"}),
    )
    .await;
    let m = env
        .nova_ok(
            &alice,
            Method::POST,
            &format!("/servers/{id}/metadata"),
            MAX,
            Some(json!({"metadata": {"b": "2"}})),
            200,
        )
        .await;
    assert_eq!(m["metadata"], json!({"a": "1", "b": "2"}));
    let m = env
        .nova_ok(
            &alice,
            Method::PUT,
            &format!("/servers/{id}/metadata"),
            MAX,
            Some(json!({"metadata": {"c": "3"}})),
            200,
        )
        .await;
    assert_eq!(m["metadata"], json!({"c": "3"}));
    env.nova_ok(
        &alice,
        Method::PUT,
        &format!("/servers/{id}/metadata/d"),
        MAX,
        Some(json!({"meta": {"d": "4"}})),
        200,
    )
    .await;
    let one = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{id}/metadata/d"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(one, json!({"meta": {"d": "4"}}));
    env.nova_ok(
        &alice,
        Method::DELETE,
        &format!("/servers/{id}/metadata/c"),
        MAX,
        None,
        204,
    )
    .await;
    let r = env
        .nova(
            &alice,
            Method::DELETE,
            &format!("/servers/{id}/metadata/c"),
            Some(MAX),
            None,
        )
        .await;
    nova_error(r, 404, "itemNotFound").await;
    // Tags: not while building, then the whole API.
    let r = env
        .nova(
            &alice,
            Method::PUT,
            &format!("/servers/{id}/tags/x"),
            Some(MAX),
            None,
        )
        .await;
    nova_error(r, 409, "conflictingRequest").await;
    force_state(&env, &id, vm::ACTIVE, None).await;
    let r = env
        .nova(
            &alice,
            Method::PUT,
            &format!("/servers/{id}/tags/x"),
            Some(MAX),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = env
        .nova(
            &alice,
            Method::PUT,
            &format!("/servers/{id}/tags/x"),
            Some(MAX),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    env.nova_ok(
        &alice,
        Method::GET,
        &format!("/servers/{id}/tags/x"),
        MAX,
        None,
        204,
    )
    .await;
    let t = env
        .nova_ok(
            &alice,
            Method::PUT,
            &format!("/servers/{id}/tags"),
            MAX,
            Some(json!({"tags": ["b", "a", "a"]})),
            200,
        )
        .await;
    assert_eq!(t["tags"], json!(["a", "b"]));
    let r = env
        .nova(
            &alice,
            Method::PUT,
            &format!("/servers/{id}/tags"),
            Some(MAX),
            Some(json!({"tags": ["a/b"]})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    env.nova_ok(
        &alice,
        Method::DELETE,
        &format!("/servers/{id}/tags"),
        MAX,
        None,
        204,
    )
    .await;
    let r = env
        .nova(
            &alice,
            Method::GET,
            &format!("/servers/{id}/tags"),
            Some(25),
            None,
        )
        .await;
    nova_error(r, 404, "itemNotFound").await;
    // User data: base64, size-limited, shown to admins.
    let s = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            &format!("/servers/{id}"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(s["server"]["OS-EXT-SRV-ATTR:user_data"], "aGVsbG8=");
    assert_eq!(s["server"]["description"], "d");
    for (ud, msg) in [
        ("not base64!", "User data needs to be valid base 64."),
        ("", ""),
    ] {
        if ud.is_empty() {
            continue;
        }
        let r = env
            .nova(&alice, Method::POST, "/servers", Some(MAX),
                Some(json!({"server": {"name": "u", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none", "user_data": ud}})))
            .await;
        assert_eq!(nova_error(r, 400, "badRequest").await, msg);
    }
    let big = "A".repeat(65536);
    let r = env
        .nova(&alice, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "u", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none", "user_data": big}})))
        .await;
    let m = nova_error(r, 400, "badRequest").await;
    assert!(m.starts_with("User data too large."), "{m}");
    // Instance actions (deleted servers too, from 2.21) with events.
    let rid = {
        let acts = env
            .nova_ok(
                &alice,
                Method::GET,
                &format!("/servers/{id}/os-instance-actions"),
                MAX,
                None,
                200,
            )
            .await;
        assert_eq!(acts["instanceActions"][0]["action"], "create");
        acts["instanceActions"][0]["request_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut conn = env.cloud.app.db.pool().acquire().await.unwrap();
    inst::finish_event(
        &mut conn,
        &id,
        &rid,
        "conductor_schedule_and_build_instances",
        Some("h1"),
        true,
        Some("ok"),
        Some("tb"),
    )
    .await
    .unwrap();
    drop(conn);
    let a = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{id}/os-instance-actions/{rid}"),
            MAX,
            None,
            200,
        )
        .await;
    let ev = &a["instanceAction"]["events"][0];
    assert_eq!(ev["event"], "conductor_schedule_and_build_instances");
    assert_eq!(ev["result"], "Success");
    assert_eq!(ev["details"], "ok");
    assert!(
        ev.get("traceback").is_none() && ev.get("host").is_none(),
        "members see no traceback or host"
    );
    assert!(ev["hostId"].as_str().unwrap().len() == 56);
    let a = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            &format!("/servers/{id}/os-instance-actions/{rid}"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(a["instanceAction"]["events"][0]["traceback"], "tb");
    assert_eq!(a["instanceAction"]["events"][0]["host"], "h1");
    let a = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{id}/os-instance-actions/{rid}"),
            50,
            None,
            200,
        )
        .await;
    assert!(
        a["instanceAction"].get("events").is_none(),
        "events for members from 2.51"
    );
    env.nova_ok(
        &alice,
        Method::DELETE,
        &format!("/servers/{id}"),
        MAX,
        None,
        204,
    )
    .await;
    let r = env
        .nova(
            &alice,
            Method::GET,
            &format!("/servers/{id}"),
            Some(MAX),
            None,
        )
        .await;
    nova_error(r, 404, "itemNotFound").await;
    let acts = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{id}/os-instance-actions"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(acts["instanceActions"].as_array().unwrap().len(), 2);
    assert_eq!(acts["instanceActions"][0]["action"], "delete");
    let r = env
        .nova(
            &alice,
            Method::GET,
            &format!("/servers/{id}/os-instance-actions"),
            Some(20),
            None,
        )
        .await;
    nova_error(r, 404, "itemNotFound").await;
    env.stop().await;
}

// ---- hosts ----------------------------------------------------------------------------------------------

async fn hosts_zones_aggregates(backend: Backend) {
    let env = Env::start(backend).await;
    let fx = fixture(&env).await;
    let rp = fake_host(&env, &fx.admin, "compute1").await;
    fake_host(&env, &fx.admin, "compute2").await;
    // Services.
    let s = env
        .nova_ok(&fx.admin, Method::GET, "/os-services", 69, None, 200)
        .await;
    let svc = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == "compute1")
        .unwrap()
        .clone();
    assert_eq!(svc["state"], "up");
    assert_eq!(svc["status"], "enabled");
    assert_eq!(svc["zone"], "nova");
    assert_eq!(svc["forced_down"], false);
    assert_eq!(svc["binary"], "nova-compute");
    let uuid = svc["id"].as_str().unwrap().to_owned();
    let old = env
        .nova_ok(&fx.admin, Method::GET, "/os-services", 1, None, 200)
        .await;
    assert!(old["services"][0]["id"].is_i64());
    assert!(old["services"][0].get("forced_down").is_none());
    let u = env
        .nova_ok(
            &fx.admin,
            Method::PUT,
            &format!("/os-services/{uuid}"),
            53,
            Some(json!({"status": "disabled", "disabled_reason": "maintenance"})),
            200,
        )
        .await;
    assert_eq!(u["service"]["status"], "disabled");
    assert_eq!(u["service"]["disabled_reason"], "maintenance");
    let u = env
        .nova_ok(
            &fx.admin,
            Method::PUT,
            &format!("/os-services/{uuid}"),
            53,
            Some(json!({"forced_down": true})),
            200,
        )
        .await;
    assert_eq!(u["service"]["state"], "down");
    let u = env
        .nova_ok(
            &fx.admin,
            Method::PUT,
            "/os-services/enable",
            11,
            Some(json!({"host": "compute1", "binary": "nova-compute"})),
            200,
        )
        .await;
    assert_eq!(u["service"]["status"], "enabled");
    env.nova_ok(
        &fx.admin,
        Method::PUT,
        "/os-services/force-down",
        11,
        Some(json!({"host": "compute1", "binary": "nova-compute", "forced_down": false})),
        200,
    )
    .await;
    // Hypervisors with statistics from placement.
    let h = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            "/os-hypervisors/detail",
            28,
            None,
            200,
        )
        .await;
    let hv = h["hypervisors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hypervisor_hostname"] == "compute1")
        .unwrap()
        .clone();
    assert_eq!(hv["vcpus"], 8);
    assert_eq!(hv["memory_mb"], 16384);
    assert_eq!(hv["local_gb"], 100);
    assert_eq!(hv["free_ram_mb"], 16384);
    assert_eq!(hv["state"], "up");
    assert_eq!(hv["cpu_info"]["arch"], "x86_64");
    assert!(hv["id"].is_i64());
    let r = env
        .placement(
            &fx.admin,
            Method::PUT,
            "/allocations/00000000-0000-0000-0000-000000000001",
            20,
            Some(json!({
                "allocations": {rp.clone(): {"resources": {"VCPU": 2, "MEMORY_MB": 1024}}},
                "project_id": "p", "user_id": "u"
            })),
        )
        .await;
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().await.unwrap());
    let hv = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            "/os-hypervisors/compute1",
            53,
            None,
            200,
        )
        .await["hypervisor"]
        .clone();
    assert_eq!(hv["vcpus_used"], 2);
    assert_eq!(hv["memory_mb_used"], 1024);
    assert_eq!(hv["id"], rp.as_str());
    let h88 = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            "/os-hypervisors/detail",
            88,
            None,
            200,
        )
        .await;
    let one = &h88["hypervisors"][0];
    assert!(one.get("vcpus").is_none() && one.get("cpu_info").is_none());
    assert_eq!(one["hypervisor_type"], "mica");
    let page = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            "/os-hypervisors?limit=1",
            53,
            None,
            200,
        )
        .await;
    assert_eq!(page["hypervisors"].as_array().unwrap().len(), 1);
    assert!(
        page["hypervisors_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker=")
    );
    let stats = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            "/os-hypervisors/statistics",
            87,
            None,
            200,
        )
        .await;
    assert_eq!(stats["hypervisor_statistics"]["count"], 2);
    assert_eq!(stats["hypervisor_statistics"]["vcpus"], 16);
    env.nova_ok(
        &fx.admin,
        Method::GET,
        "/os-hypervisors/statistics",
        88,
        None,
        404,
    )
    .await;
    // Aggregates with zones.
    let a = env
        .nova_ok(
            &fx.admin,
            Method::POST,
            "/os-aggregates",
            81,
            Some(json!({"aggregate": {"name": "agg1", "availability_zone": "az1"}})),
            200,
        )
        .await;
    let aid = a["aggregate"]["id"].as_i64().unwrap();
    assert_eq!(a["aggregate"]["availability_zone"], "az1");
    assert!(a["aggregate"]["uuid"].is_string());
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            "/os-aggregates",
            Some(81),
            Some(json!({"aggregate": {"name": "agg1"}})),
        )
        .await;
    nova_error(r, 409, "conflictingRequest").await;
    let a = env
        .nova_ok(
            &fx.admin,
            Method::POST,
            &format!("/os-aggregates/{aid}/action"),
            81,
            Some(json!({"add_host": {"host": "compute1"}})),
            200,
        )
        .await;
    assert_eq!(a["aggregate"]["hosts"], json!(["compute1"]));
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/os-aggregates/{aid}/action"),
            Some(81),
            Some(json!({"add_host": {"host": "compute1"}})),
        )
        .await;
    nova_error(r, 409, "conflictingRequest").await;
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/os-aggregates/{aid}/action"),
            Some(81),
            Some(json!({"add_host": {"host": "nope"}})),
        )
        .await;
    nova_error(r, 404, "itemNotFound").await;
    let a = env
        .nova_ok(
            &fx.admin,
            Method::POST,
            &format!("/os-aggregates/{aid}/action"),
            81,
            Some(json!({"set_metadata": {"metadata": {"ssd": "true"}}})),
            200,
        )
        .await;
    assert_eq!(
        a["aggregate"]["metadata"],
        json!({"availability_zone": "az1", "ssd": "true"})
    );
    // The membership reaches placement, for the scheduler.
    let aggs = env
        .placement(
            &fx.admin,
            Method::GET,
            &format!("/resource_providers/{rp}/aggregates"),
            19,
            None,
        )
        .await;
    let aggs: Value = aggs.json().await.unwrap();
    assert_eq!(aggs["aggregates"], json!([a["aggregate"]["uuid"]]));
    // A host can't be in two zones.
    let b = env
        .nova_ok(
            &fx.admin,
            Method::POST,
            "/os-aggregates",
            81,
            Some(json!({"aggregate": {"name": "agg2", "availability_zone": "az2"}})),
            200,
        )
        .await;
    let bid = b["aggregate"]["id"].as_i64().unwrap();
    let r = env
        .nova(
            &fx.admin,
            Method::POST,
            &format!("/os-aggregates/{bid}/action"),
            Some(81),
            Some(json!({"add_host": {"host": "compute1"}})),
        )
        .await;
    nova_error(r, 409, "conflictingRequest").await;
    // Zones: az1 for compute1, nova for compute2; details for admins.
    let member = env.user_with_role("p1", "alice", "member").await;
    let z = env
        .nova_ok(&member, Method::GET, "/os-availability-zone", 1, None, 200)
        .await;
    let names: BTreeSet<&str> = z["availabilityZoneInfo"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["zoneName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["az1", "nova"].into_iter().collect());
    assert_eq!(z["availabilityZoneInfo"][0]["hosts"], Value::Null);
    let z = env
        .nova_ok(
            &fx.admin,
            Method::GET,
            "/os-availability-zone/detail",
            1,
            None,
            200,
        )
        .await;
    let az1 = z["availabilityZoneInfo"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zoneName"] == "az1")
        .unwrap()
        .clone();
    assert_eq!(az1["hosts"]["compute1"]["nova-compute"]["available"], true);
    // A server may ask for az1 (pinned, 2.96) but not for an unknown zone.
    let body = env
        .nova_ok(&member, Method::POST, "/servers", MAX,
            Some(json!({"server": {"name": "z", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none", "availability_zone": "az1"}})), 202)
        .await;
    let sid = body["server"]["id"].as_str().unwrap();
    let s = env
        .nova_ok(
            &member,
            Method::GET,
            &format!("/servers/{sid}"),
            MAX,
            None,
            200,
        )
        .await;
    assert_eq!(s["server"]["pinned_availability_zone"], "az1");
    assert_eq!(s["server"]["OS-EXT-AZ:availability_zone"], "az1");
    let r = env
        .nova(&member, Method::POST, "/servers", Some(MAX),
            Some(json!({"server": {"name": "z", "imageRef": fx.image, "flavorRef": fx.flavor, "networks": "none", "availability_zone": "mars"}})))
        .await;
    nova_error(r, 400, "badRequest").await;
    // Removing and deleting.
    let r = env
        .nova(
            &fx.admin,
            Method::DELETE,
            &format!("/os-aggregates/{aid}"),
            Some(81),
            None,
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    env.nova_ok(
        &fx.admin,
        Method::POST,
        &format!("/os-aggregates/{aid}/action"),
        81,
        Some(json!({"remove_host": {"host": "compute1"}})),
        200,
    )
    .await;
    env.nova_ok(
        &fx.admin,
        Method::DELETE,
        &format!("/os-aggregates/{aid}"),
        81,
        None,
        200,
    )
    .await;
    let aggs: Value = env
        .placement(
            &fx.admin,
            Method::GET,
            &format!("/resource_providers/{rp}/aggregates"),
            19,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(aggs["aggregates"], json!([]));
    env.stop().await;
}

/// A `limit` above `[compute] max_limit` is capped, and the full page it
/// gives still links to the next one.
async fn instance_actions_page_at_max_limit(backend: Backend) {
    let env = Env::start_with(backend, |c| c.compute.max_limit = 1).await;
    let fx = fixture(&env).await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let id = create_server(&env, &alice, &fx, "s", json!({})).await;
    for query in ["?limit=5", ""] {
        let acts = env
            .nova_ok(
                &alice,
                Method::GET,
                &format!("/servers/{id}/os-instance-actions{query}"),
                58,
                None,
                200,
            )
            .await;
        assert_eq!(acts["instanceActions"].as_array().unwrap().len(), 1);
        assert!(
            acts["links"][0]["href"]
                .as_str()
                .is_some_and(|h| h.contains("marker=")),
            "{query}: a full page links to the next: {acts}"
        );
    }
    env.stop().await;
}

both_databases!(
    instance_actions_page_at_max_limit,
    discovery_and_microversions,
    server_fields_by_microversion,
    lists_filter_sort_and_page,
    illegal_transitions_are_409,
    quotas_are_enforced_with_novas_messages,
    projects_are_isolated_and_admin_apis_guarded,
    flavors_keypairs_and_groups,
    server_subresources,
    hosts_zones_aggregates,
);
