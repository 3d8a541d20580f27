//! Tenant isolation (issue 15) on PostgreSQL and SQLite, with the roles in
//! this process and simulated agents: a port's client-set `device_id` never
//! binds it into another project's server, neither through the port API
//! nor in what the conductor hands to the compute host.

mod common;
mod fleet;

use std::time::{Duration, Instant};

use common::{Api, Caller};
use fleet::{Bus, Fleet, Hosts};
use mica_controller::app::ServiceKind;
use mica_controller::db::Backend;
use mica_controller::testing::ADMIN_PASSWORD;
use mica_rpc::Topic;
use mica_rpc::conductor::{ScheduleAndBuild, ScheduleAndBuildRequest};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both_databases!(
    ports_are_bound_only_by_the_compute_api,
    readers_and_other_projects_never_write,
    nul_characters_are_400_everywhere,
    data_errors_of_the_database_are_400,
    parallel_deletes_of_one_security_group,
    slow_clients_are_cut_off,
    connections_beyond_the_cap_get_503,
    password_checks_are_capped,
);

fn neutron_error(body: &Value, kind: &str) {
    assert_eq!(body["NeutronError"]["type"], kind, "{body}");
    assert!(
        body["NeutronError"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn ports_are_bound_only_by_the_compute_api(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 1, 8, 8192, 100)],
        |_| {},
    )
    .await;
    let api = Api::of(&f.cloud);
    let admin = api.admin().await;
    let flavor = api.flavor(&admin, "t1").await;
    let a = api.user_in(&admin, "proj-a", "alice", "member").await;
    let b = api.user_in(&admin, "proj-b", "bob", "member").await;
    let net_a = api.network_with_subnet(&a, "net-a", "10.10.0.0/24").await;
    let net_b = api.network_with_subnet(&b, "net-b", "10.20.0.0/24").await;

    // B's server, on B's network.
    let (s, created) = api
        .nova(
            &b,
            Method::POST,
            "/servers",
            Some(
                json!({"server": {"name": "vm-b", "imageRef": f.image_id, "flavorRef": flavor,
                "networks": [{"uuid": net_b}]}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let vm_b = created["server"]["id"].as_str().unwrap().to_owned();
    let view = api.settle(&b, &vm_b).await;
    assert_eq!(view["status"], "ACTIVE", "{view}");

    // A can't point a port at B's server: not at create…
    for owner in [json!("compute:nova"), json!("compute:"), Value::Null] {
        let mut port = json!({"network_id": net_a, "device_id": vm_b});
        if !owner.is_null() {
            port["device_owner"] = owner.clone();
        }
        let (s, e) = api
            .neutron(&a, Method::POST, "/ports", Some(json!({ "port": port })))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "owner {owner}: {e}");
        neutron_error(&e, "PolicyNotAuthorized");
    }
    // …nor by an update.
    let (s, mine) = api
        .neutron(
            &a,
            Method::POST,
            "/ports",
            Some(json!({"port": {"network_id": net_a}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{mine}");
    let port_a = mine["port"]["id"].as_str().unwrap().to_owned();
    let (s, e) = api
        .neutron(
            &a,
            Method::PUT,
            &format!("/ports/{port_a}"),
            Some(json!({"port": {"device_id": vm_b, "device_owner": "compute:nova"}})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    neutron_error(&e, "PolicyNotAuthorized");
    // A `compute:` owner needs a server of the port's own project.
    let (s, e) = api
        .neutron(
            &a,
            Method::PUT,
            &format!("/ports/{port_a}"),
            Some(
                json!({"port": {"device_id": uuid::Uuid::new_v4().to_string(),
                "device_owner": "compute:nova"}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    // Labels of one's own are fine.
    let (s, e) = api
        .neutron(
            &a,
            Method::PUT,
            &format!("/ports/{port_a}"),
            Some(json!({"port": {"device_id": "my-appliance", "device_owner": "custom:lb"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");

    // B labelling a port of its own with its own server is allowed (as in
    // Neutron) but does not plug it: the server keeps the one port Nova
    // made for it.
    let (s, own) = api
        .neutron(
            &b,
            Method::POST,
            "/ports",
            Some(json!({"port": {"network_id": net_b, "device_id": vm_b, "device_owner": "compute:nova"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{own}");
    let labelled = own["port"]["id"].as_str().unwrap().to_owned();
    let view = api.settle(&b, &vm_b).await;
    let addresses = view["addresses"].as_object().unwrap();
    assert_eq!(
        addresses.keys().collect::<Vec<_>>(),
        vec!["net-b"],
        "{view}"
    );
    assert_eq!(addresses["net-b"].as_array().unwrap().len(), 1, "{view}");
    // B can delete the labelled port: it is in no server.
    let (s, _) = api
        .neutron(&b, Method::DELETE, &format!("/ports/{labelled}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Nova binds only ports of the server's own project, for admins too.
    for who in [&b, &admin] {
        let (s, e) = api
            .nova(
                who,
                Method::POST,
                "/servers",
                Some(
                    json!({"server": {"name": "x", "imageRef": f.image_id, "flavorRef": flavor,
                    "networks": [{"port": port_a}]}}),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    }
    let (s, p) = api
        .neutron(&a, Method::GET, &format!("/ports/{port_a}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["port"]["device_id"], "my-appliance", "{p}");

    // The conductor plugs only the ports Nova bound: a port that names a
    // server in `device_id` alone (as the API let any client write before)
    // is neither bound to its host nor sent to it.
    let victim = f.instance("victim", 1, 512, 1);
    let uuid = victim.uuid.clone();
    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    f.insert(&[victim], &request_id).await;
    let app = &f.cloud.app;
    let network = mica_controller::db::network::get_network(app.db.pool(), &net_a)
        .await
        .unwrap()
        .unwrap();
    let mut tx = app.db.begin().await.unwrap();
    let injected = mica_controller::app::network::ports::allocate_port(
        &mut tx,
        "fa:16:3e",
        &mica_controller::app::network::ports::PortRequest {
            network: Some(network),
            project_id: a.project_id.clone(),
            device_id: uuid.clone(),
            device_owner: "compute:nova".into(),
            admin_state_up: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    f.api
        .cast_method::<ScheduleAndBuild>(
            Topic::conductor(),
            &ScheduleAndBuildRequest {
                request_id,
                instance_uuids: vec![uuid.clone()],
            },
        )
        .await
        .unwrap();
    let view = api.settle(&admin, &uuid).await;
    assert_eq!(view["status"], "ACTIVE", "{view}");
    assert_eq!(view["addresses"], json!({}), "{view}");
    let sim = &f.agents[0].backend;
    assert_eq!(sim.ports_of(&uuid), Some(vec![]), "the host got no port");
    let got = sim.ports_of(&vm_b).expect("B's server on the host");
    assert_eq!(got.len(), 1, "B's server has its own port only: {got:?}");
    let (s, p) = api
        .neutron(
            &admin,
            Method::GET,
            &format!("/ports/{}", injected.row.id),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["port"]["binding:host_id"], "", "{p}");
    assert_eq!(p["port"]["status"], "DOWN", "{p}");
    // Its owner can delete it while the server it names lives.
    let (s, e) = api
        .neutron(
            &a,
            Method::DELETE,
            &format!("/ports/{}", injected.row.id),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{e}");
    // B's server lists only its own network, still.
    let view = api.settle(&b, &vm_b).await;
    assert_eq!(
        view["addresses"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["net-b"]
    );
    f.stop().await;
}

// ---- the policy matrix -------------------------------------------------------------------

/// A write route found in the routers' source: (API, method, path).
type Route = (&'static str, String, String);

/// The routers: source file → API.
const ROUTERS: &[(&str, &str)] = &[
    ("compute/mod.rs", "compute"),
    ("network.rs", "network"),
    ("image.rs", "image"),
    ("identity.rs", "identity"),
    ("placement/mod.rs", "placement"),
    ("console_proxy.rs", "console"),
];

/// Every `.route(path, method(handler).method(handler)…)` of `text`:
/// (path, methods).
fn routes_in(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(".route(") {
        let body_start = i + ".route(".len();
        let bytes = rest.as_bytes();
        let (mut depth, mut k) = (1, body_start);
        while depth > 0 {
            match bytes[k] {
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ => {}
            }
            k += 1;
        }
        let body = &rest[body_start..k - 1];
        let path = body.split('"').nth(1).expect("a route's path literal");
        let mut methods = Vec::new();
        for m in ["get", "post", "put", "patch", "delete", "head"] {
            let pat = format!("{m}(");
            let mut from = 0;
            while let Some(j) = body[from..].find(&pat) {
                let at = from + j;
                let before = body[..at].chars().last();
                let routing = body[..at].ends_with("routing::");
                if routing || !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    methods.push(m.to_owned());
                }
                from = at + pat.len();
            }
        }
        assert!(!methods.is_empty(), "no method parsed in .route({body})");
        out.push((path.to_owned(), methods));
        rest = &rest[k..];
    }
    out
}

/// Every write route of every API, from the routers' source; each file of
/// `src/api` that registers routes must be in [`ROUTERS`].
fn write_routes() -> Vec<Route> {
    let api = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut files = Vec::new();
    let mut dirs = vec![api.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&api).unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        let routes = routes_in(&text);
        if routes.is_empty() {
            continue;
        }
        let (_, service) = ROUTERS
            .iter()
            .find(|(file, _)| *file == rel)
            .unwrap_or_else(|| panic!("src/api/{rel} registers routes: add it to ROUTERS"));
        for (path, methods) in routes {
            let path = if *service == "compute" && !path.starts_with("/v2.1") && path != "/" {
                format!("/v2.1{path}")
            } else {
                path
            };
            for m in methods {
                if ["post", "put", "patch", "delete"].contains(&m.as_str()) {
                    out.push((*service, m.to_uppercase(), path.clone()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The server actions the compute API dispatches (the string arms of
/// `match name.as_str()` in its action handler).
fn server_actions() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/compute/servers.rs");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find("pub async fn action(")
        .expect("the action handler");
    let body = &text[start..];
    let m = body
        .find("match name.as_str() {")
        .expect("the action match");
    let end = body[m..].find("other =>").expect("the fallback arm") + m;
    let arms = &body[m..end];
    // The arms are the lines at the first arm's indentation.
    let indent = |l: &str| l.len() - l.trim_start().len();
    let first = arms
        .lines()
        .find(|l| l.trim_start().starts_with('"'))
        .expect("an arm");
    let mut out = Vec::new();
    for line in arms.lines() {
        let t = line.trim_start();
        if !t.starts_with('"') || indent(line) != indent(first) {
            continue;
        }
        // `"a" | "b" if … =>` or `"a" => …`
        let head = t.split("=>").next().unwrap();
        for part in head.split('|') {
            if let Some(name) = part
                .trim()
                .strip_prefix('"')
                .and_then(|p| p.split('"').next())
            {
                out.push(name.to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// One write operation of the matrix.
struct Case {
    /// The API and route it covers (`action` for a server action).
    service: &'static str,
    method: &'static str,
    route: &'static str,
    action: Option<&'static str>,
    /// The concrete request.
    path: String,
    body: Option<Value>,
    /// Compute microversion (`None`: 2.90) or placement microversion.
    mv: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    /// What a reader of the owning project gets.
    reader: u16,
    /// What a member of another project gets (`None`: the operation has
    /// no target in another project — a create in one's own project).
    other: Option<u16>,
}

fn case(
    service: &'static str,
    method: &'static str,
    route: &'static str,
    path: String,
    body: Option<Value>,
    reader: u16,
    other: Option<u16>,
) -> Case {
    Case {
        service,
        method,
        route,
        action: None,
        path,
        body,
        mv: None,
        headers: vec![],
        reader,
        other,
    }
}

/// The objects of project A every case targets.
struct Fixture {
    project_a: String,
    project_c: String,
    amy: Caller,
    server: String,
    flavor: String,
    group: String,
    image: String,
    queued_image: String,
    network: String,
    subnet: String,
    port: String,
    security_group: String,
    rule: String,
    aggregate: String,
    role_admin: String,
    service_id: String,
    endpoint_id: String,
}

fn cases(x: &Fixture) -> Vec<Case> {
    const ADMIN_ONLY: Option<u16> = Some(403);
    const HIDDEN: Option<u16> = Some(404);
    let s = &x.server;
    let mut v = vec![
        // compute: servers
        case(
            "compute",
            "POST",
            "/v2.1/servers",
            "/servers".into(),
            Some(
                json!({"server": {"name": "x", "imageRef": x.image, "flavorRef": x.flavor, "networks": "none"}}),
            ),
            403,
            None,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/servers/{id}",
            format!("/servers/{s}"),
            Some(json!({"server": {"name": "renamed"}})),
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/servers/{id}",
            format!("/servers/{s}"),
            None,
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "POST",
            "/v2.1/servers/{id}/metadata",
            format!("/servers/{s}/metadata"),
            Some(json!({"metadata": {"a": "b"}})),
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/servers/{id}/metadata",
            format!("/servers/{s}/metadata"),
            Some(json!({"metadata": {"a": "b"}})),
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/servers/{id}/metadata/{key}",
            format!("/servers/{s}/metadata/k"),
            Some(json!({"meta": {"k": "v2"}})),
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/servers/{id}/metadata/{key}",
            format!("/servers/{s}/metadata/k"),
            None,
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/servers/{id}/tags",
            format!("/servers/{s}/tags"),
            Some(json!({"tags": ["x"]})),
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/servers/{id}/tags",
            format!("/servers/{s}/tags"),
            None,
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/servers/{id}/tags/{tag}",
            format!("/servers/{s}/tags/new"),
            None,
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/servers/{id}/tags/{tag}",
            format!("/servers/{s}/tags/t"),
            None,
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "POST",
            "/v2.1/servers/{id}/remote-consoles",
            format!("/servers/{s}/remote-consoles"),
            Some(json!({"remote_console": {"protocol": "vnc", "type": "novnc"}})),
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/servers/{id}/os-server-password",
            format!("/servers/{s}/os-server-password"),
            None,
            403,
            HIDDEN,
        ),
        // compute: flavors (admin only)
        case(
            "compute",
            "POST",
            "/v2.1/flavors",
            "/flavors".into(),
            Some(json!({"flavor": {"name": "z", "ram": 64, "vcpus": 1, "disk": 1}})),
            403,
            None,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/flavors/{id}",
            format!("/flavors/{}", x.flavor),
            Some(json!({"flavor": {"description": "d"}})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/flavors/{id}",
            format!("/flavors/{}", x.flavor),
            None,
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "POST",
            "/v2.1/flavors/{id}/action",
            format!("/flavors/{}/action", x.flavor),
            Some(json!({"addTenantAccess": {"tenant": x.project_a}})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "POST",
            "/v2.1/flavors/{id}/os-extra_specs",
            format!("/flavors/{}/os-extra_specs", x.flavor),
            Some(json!({"extra_specs": {"hw:cpu_policy": "shared"}})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/flavors/{id}/os-extra_specs/{key}",
            format!("/flavors/{}/os-extra_specs/hw:cpu_policy", x.flavor),
            Some(json!({"hw:cpu_policy": "shared"})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/flavors/{id}/os-extra_specs/{key}",
            format!("/flavors/{}/os-extra_specs/hw:cpu_policy", x.flavor),
            None,
            403,
            ADMIN_ONLY,
        ),
        // compute: key pairs belong to a user, not a project. Nova's rule
        // is `admin or user_id:%(user_id)s`: a reader manages its own (201
        // with a name of its own, below) and never sees another user's.
        case(
            "compute",
            "DELETE",
            "/v2.1/os-keypairs/{name}",
            "/os-keypairs/kp-amy".into(),
            None,
            404,
            HIDDEN,
        ),
        // compute: server groups
        case(
            "compute",
            "POST",
            "/v2.1/os-server-groups",
            "/os-server-groups".into(),
            Some(json!({"server_group": {"name": "g2", "policy": "affinity"}})),
            403,
            None,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/os-server-groups/{id}",
            format!("/os-server-groups/{}", x.group),
            None,
            403,
            HIDDEN,
        ),
        // compute: admin APIs
        case(
            "compute",
            "PUT",
            "/v2.1/os-quota-sets/{project}",
            format!("/os-quota-sets/{}", x.project_a),
            Some(json!({"quota_set": {"instances": 50}})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/os-quota-sets/{project}",
            format!("/os-quota-sets/{}", x.project_a),
            None,
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/os-quota-class-sets/{class}",
            "/os-quota-class-sets/default".into(),
            Some(json!({"quota_class_set": {"instances": 50}})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "POST",
            "/v2.1/os-aggregates",
            "/os-aggregates".into(),
            Some(json!({"aggregate": {"name": "ag2"}})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/os-aggregates/{id}",
            format!("/os-aggregates/{}", x.aggregate),
            Some(json!({"aggregate": {"name": "ag3"}})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/os-aggregates/{id}",
            format!("/os-aggregates/{}", x.aggregate),
            None,
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "POST",
            "/v2.1/os-aggregates/{id}/action",
            format!("/os-aggregates/{}/action", x.aggregate),
            Some(json!({"set_metadata": {"metadata": {"a": "b"}}})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/os-services/{id}",
            "/os-services/host-0".into(),
            Some(json!({"status": "disabled"})),
            403,
            ADMIN_ONLY,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/os-services/{id}",
            "/os-services/host-0".into(),
            None,
            403,
            ADMIN_ONLY,
        ),
    ];
    // compute: Nova's security group proxy (up to 2.35)
    for mut c in [
        case(
            "compute",
            "POST",
            "/v2.1/os-security-groups",
            "/os-security-groups".into(),
            Some(json!({"security_group": {"name": "sg2", "description": "d"}})),
            403,
            None,
        ),
        case(
            "compute",
            "PUT",
            "/v2.1/os-security-groups/{id}",
            format!("/os-security-groups/{}", x.security_group),
            Some(json!({"security_group": {"name": "sg3", "description": "d"}})),
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/os-security-groups/{id}",
            format!("/os-security-groups/{}", x.security_group),
            None,
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "POST",
            "/v2.1/os-security-group-rules",
            "/os-security-group-rules".into(),
            Some(
                json!({"security_group_rule": {"parent_group_id": x.security_group, "ip_protocol": "tcp",
                "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/8"}}),
            ),
            403,
            HIDDEN,
        ),
        case(
            "compute",
            "DELETE",
            "/v2.1/os-security-group-rules/{id}",
            format!("/os-security-group-rules/{}", x.rule),
            None,
            403,
            HIDDEN,
        ),
    ] {
        c.mv = Some("2.1");
        v.push(c);
    }
    // compute: server actions
    let actions: &[(&str, Value, Option<&'static str>)] = &[
        ("os-stop", json!(null), None),
        ("os-start", json!(null), None),
        ("reboot", json!({"type": "SOFT"}), None),
        ("pause", json!(null), None),
        ("unpause", json!(null), None),
        ("suspend", json!(null), None),
        ("resume", json!(null), None),
        ("resize", json!({"flavorRef": "other-flavor"}), None),
        ("confirmResize", json!(null), None),
        ("revertResize", json!(null), None),
        ("rescue", json!({}), None),
        ("unrescue", json!(null), None),
        ("createImage", json!({"name": "snap"}), None),
        ("migrate", json!(null), None),
        (
            "os-migrateLive",
            json!({"host": null, "block_migration": "auto"}),
            Some("2.30"),
        ),
        ("evacuate", json!({}), Some("2.68")),
        ("rebuild", json!({"imageRef": x.image}), None),
        ("trigger_crash_dump", json!(null), Some("2.17")),
        ("lock", json!(null), None),
        ("unlock", json!(null), None),
        ("addSecurityGroup", json!({"name": "default"}), None),
        ("removeSecurityGroup", json!({"name": "default"}), None),
        ("os-resetState", json!({"state": "active"}), None),
        ("os-getConsoleOutput", json!({}), None),
        ("os-getVNCConsole", json!({"type": "novnc"}), Some("2.1")),
        (
            "os-getSerialConsole",
            json!({"type": "serial"}),
            Some("2.1"),
        ),
        (
            "os-getSPICEConsole",
            json!({"type": "spice-html5"}),
            Some("2.1"),
        ),
        (
            "os-getRDPConsole",
            json!({"type": "rdp-html5"}),
            Some("2.1"),
        ),
    ];
    for (name, arg, mv) in actions {
        let mut c = case(
            "compute",
            "POST",
            "/v2.1/servers/{id}/action",
            format!("/servers/{s}/action"),
            Some(json!({ *name: arg })),
            403,
            HIDDEN,
        );
        c.action = Some(name);
        c.mv = *mv;
        v.push(c);
    }
    // network
    v.extend([
        case("network", "POST", "/v2.0/networks", "/networks".into(), Some(json!({"network": {"name": "n2"}})), 403, None),
        case("network", "PUT", "/v2.0/networks/{id}", format!("/networks/{}", x.network),
            Some(json!({"network": {"name": "n3"}})), 403, HIDDEN),
        case("network", "DELETE", "/v2.0/networks/{id}", format!("/networks/{}", x.network), None, 403, HIDDEN),
        case("network", "POST", "/v2.0/subnets", "/subnets".into(),
            Some(json!({"subnet": {"network_id": x.network, "cidr": "10.77.0.0/24", "ip_version": 4}})), 403, HIDDEN),
        case("network", "PUT", "/v2.0/subnets/{id}", format!("/subnets/{}", x.subnet),
            Some(json!({"subnet": {"name": "s3"}})), 403, HIDDEN),
        case("network", "DELETE", "/v2.0/subnets/{id}", format!("/subnets/{}", x.subnet), None, 403, HIDDEN),
        case("network", "POST", "/v2.0/ports", "/ports".into(),
            Some(json!({"port": {"network_id": x.network}})), 403, HIDDEN),
        case("network", "PUT", "/v2.0/ports/{id}", format!("/ports/{}", x.port),
            Some(json!({"port": {"name": "p3"}})), 403, HIDDEN),
        case("network", "DELETE", "/v2.0/ports/{id}", format!("/ports/{}", x.port), None, 403, HIDDEN),
        case("network", "POST", "/v2.0/security-groups", "/security-groups".into(),
            Some(json!({"security_group": {"name": "sg4"}})), 403, None),
        case("network", "PUT", "/v2.0/security-groups/{id}", format!("/security-groups/{}", x.security_group),
            Some(json!({"security_group": {"description": "d2"}})), 403, HIDDEN),
        case("network", "DELETE", "/v2.0/security-groups/{id}", format!("/security-groups/{}", x.security_group),
            None, 403, HIDDEN),
        case("network", "POST", "/v2.0/security-group-rules", "/security-group-rules".into(),
            Some(json!({"security_group_rule": {"security_group_id": x.security_group, "direction": "ingress",
                "protocol": "tcp", "port_range_min": 80, "port_range_max": 80}})), 403, HIDDEN),
        case("network", "DELETE", "/v2.0/security-group-rules/{id}", format!("/security-group-rules/{}", x.rule),
            None, 403, HIDDEN),
        case("network", "PUT", "/v2.0/quotas/{project}", format!("/quotas/{}", x.project_a),
            Some(json!({"quota": {"port": 100}})), 403, ADMIN_ONLY),
        case("network", "DELETE", "/v2.0/quotas/{project}", format!("/quotas/{}", x.project_a), None, 403, ADMIN_ONLY),
    ]);
    // image
    let img = &x.image;
    let mut upload = case(
        "image",
        "PUT",
        "/v2/images/{id}/file",
        format!("/v2/images/{}/file", x.queued_image),
        None,
        403,
        HIDDEN,
    );
    upload
        .headers
        .push(("content-type", "application/octet-stream".into()));
    v.extend([
        case(
            "image",
            "POST",
            "/v2/images",
            "/v2/images".into(),
            Some(json!({"name": "i2", "disk_format": "raw", "container_format": "bare"})),
            403,
            None,
        ),
        case(
            "image",
            "DELETE",
            "/v2/images/{id}",
            format!("/v2/images/{img}"),
            None,
            403,
            HIDDEN,
        ),
        upload,
        case(
            "image",
            "PUT",
            "/v2/images/{id}/tags/{tag}",
            format!("/v2/images/{img}/tags/new"),
            None,
            403,
            HIDDEN,
        ),
        case(
            "image",
            "DELETE",
            "/v2/images/{id}/tags/{tag}",
            format!("/v2/images/{img}/tags/t"),
            None,
            403,
            HIDDEN,
        ),
        case(
            "image",
            "POST",
            "/v2/images/{id}/members",
            format!("/v2/images/{img}/members"),
            Some(json!({"member": x.project_a})),
            403,
            HIDDEN,
        ),
        // Only the member itself accepts or rejects (Glance's rule).
        case(
            "image",
            "PUT",
            "/v2/images/{id}/members/{member}",
            format!("/v2/images/{img}/members/{}", x.project_c),
            Some(json!({"status": "accepted"})),
            403,
            HIDDEN,
        ),
        case(
            "image",
            "DELETE",
            "/v2/images/{id}/members/{member}",
            format!("/v2/images/{img}/members/{}", x.project_c),
            None,
            403,
            HIDDEN,
        ),
    ]);
    let mut patch = case(
        "image",
        "PATCH",
        "/v2/images/{id}",
        format!("/v2/images/{img}"),
        Some(json!([{"op": "replace", "path": "/name", "value": "renamed"}])),
        403,
        HIDDEN,
    );
    patch.headers.push((
        "content-type",
        "application/openstack-images-v2.1-json-patch".into(),
    ));
    v.push(patch);
    // placement: operators only
    let rp = uuid::Uuid::new_v4().to_string();
    for (method, route, path, body) in [
        (
            "POST",
            "/resource_providers",
            "/resource_providers".to_owned(),
            Some(json!({"name": "rp"})),
        ),
        (
            "PUT",
            "/resource_providers/{uuid}",
            format!("/resource_providers/{rp}"),
            Some(json!({"name": "rp2"})),
        ),
        (
            "DELETE",
            "/resource_providers/{uuid}",
            format!("/resource_providers/{rp}"),
            None,
        ),
        (
            "POST",
            "/resource_providers/{uuid}/inventories",
            format!("/resource_providers/{rp}/inventories"),
            Some(json!({"resource_class": "VCPU", "total": 1, "resource_provider_generation": 0})),
        ),
        (
            "PUT",
            "/resource_providers/{uuid}/inventories",
            format!("/resource_providers/{rp}/inventories"),
            Some(json!({"inventories": {}, "resource_provider_generation": 0})),
        ),
        (
            "DELETE",
            "/resource_providers/{uuid}/inventories",
            format!("/resource_providers/{rp}/inventories"),
            None,
        ),
        (
            "PUT",
            "/resource_providers/{uuid}/inventories/{rc}",
            format!("/resource_providers/{rp}/inventories/VCPU"),
            Some(json!({"total": 2, "resource_provider_generation": 0})),
        ),
        (
            "DELETE",
            "/resource_providers/{uuid}/inventories/{rc}",
            format!("/resource_providers/{rp}/inventories/VCPU"),
            None,
        ),
        (
            "PUT",
            "/resource_providers/{uuid}/aggregates",
            format!("/resource_providers/{rp}/aggregates"),
            Some(json!({"aggregates": [], "resource_provider_generation": 0})),
        ),
        (
            "PUT",
            "/resource_providers/{uuid}/traits",
            format!("/resource_providers/{rp}/traits"),
            Some(json!({"traits": [], "resource_provider_generation": 0})),
        ),
        (
            "DELETE",
            "/resource_providers/{uuid}/traits",
            format!("/resource_providers/{rp}/traits"),
            None,
        ),
        (
            "POST",
            "/resource_classes",
            "/resource_classes".into(),
            Some(json!({"name": "CUSTOM_X"})),
        ),
        (
            "PUT",
            "/resource_classes/{name}",
            "/resource_classes/CUSTOM_Y".into(),
            None,
        ),
        (
            "DELETE",
            "/resource_classes/{name}",
            "/resource_classes/CUSTOM_Y".into(),
            None,
        ),
        ("PUT", "/traits/{name}", "/traits/CUSTOM_T".into(), None),
        ("DELETE", "/traits/{name}", "/traits/CUSTOM_T".into(), None),
        (
            "PUT",
            "/allocations/{consumer}",
            format!("/allocations/{}", x.server),
            Some(
                json!({"allocations": {rp.clone(): {"resources": {"VCPU": 1}}}, "project_id": x.project_a, "user_id": x.amy.user_id}),
            ),
        ),
        (
            "DELETE",
            "/allocations/{consumer}",
            format!("/allocations/{}", x.server),
            None,
        ),
        (
            "POST",
            "/allocations",
            "/allocations".into(),
            Some(
                json!({x.server.clone(): {"allocations": {rp.clone(): {"resources": {"VCPU": 1}}}, "project_id": x.project_a,
                "user_id": x.amy.user_id}}),
            ),
        ),
    ] {
        let mut c = case("placement", method, route, path, body, 403, ADMIN_ONLY);
        c.mv = Some("1.24");
        v.push(c);
    }
    // identity: administrators', except for one's own password and tokens
    // (the cases target another user's).
    let amy = &x.amy.user_id;
    let mut revoke = case(
        "identity",
        "DELETE",
        "/v3/auth/tokens",
        "/v3/auth/tokens".into(),
        None,
        403,
        ADMIN_ONLY,
    );
    revoke
        .headers
        .push(("x-subject-token", x.amy.token.clone()));
    v.extend([
        revoke,
        case("identity", "POST", "/v3/domains", "/v3/domains".into(), Some(json!({"domain": {"name": "d2"}})), 403, ADMIN_ONLY),
        case("identity", "POST", "/v3/projects", "/v3/projects".into(),
            Some(json!({"project": {"name": "p2", "domain_id": "default"}})), 403, ADMIN_ONLY),
        case("identity", "PATCH", "/v3/projects/{id}", format!("/v3/projects/{}", x.project_a),
            Some(json!({"project": {"description": "x"}})), 403, ADMIN_ONLY),
        case("identity", "DELETE", "/v3/projects/{id}", format!("/v3/projects/{}", x.project_a), None, 403, ADMIN_ONLY),
        case("identity", "PUT", "/v3/projects/{project_id}/users/{user_id}/roles/{role_id}",
            format!("/v3/projects/{}/users/{amy}/roles/{}", x.project_a, x.role_admin), None, 403, ADMIN_ONLY),
        case("identity", "DELETE", "/v3/projects/{project_id}/users/{user_id}/roles/{role_id}",
            format!("/v3/projects/{}/users/{amy}/roles/{}", x.project_a, x.role_admin), None, 403, ADMIN_ONLY),
        case("identity", "POST", "/v3/users", "/v3/users".into(),
            Some(json!({"user": {"name": "u2", "domain_id": "default"}})), 403, ADMIN_ONLY),
        case("identity", "PATCH", "/v3/users/{id}", format!("/v3/users/{amy}"),
            Some(json!({"user": {"enabled": false}})), 403, ADMIN_ONLY),
        case("identity", "DELETE", "/v3/users/{id}", format!("/v3/users/{amy}"), None, 403, ADMIN_ONLY),
        case("identity", "POST", "/v3/users/{id}/password", format!("/v3/users/{amy}/password"),
            Some(json!({"user": {"password": "new-pw", "original_password": "pw-of-user"}})), 403, ADMIN_ONLY),
        case("identity", "POST", "/v3/roles", "/v3/roles".into(), Some(json!({"role": {"name": "r2"}})), 403, ADMIN_ONLY),
        case("identity", "DELETE", "/v3/roles/{id}", format!("/v3/roles/{}", x.role_admin), None, 403, ADMIN_ONLY),
        case("identity", "POST", "/v3/services", "/v3/services".into(),
            Some(json!({"service": {"type": "x", "name": "x"}})), 403, ADMIN_ONLY),
        case("identity", "DELETE", "/v3/services/{id}", format!("/v3/services/{}", x.service_id), None, 403, ADMIN_ONLY),
        case("identity", "POST", "/v3/endpoints", "/v3/endpoints".into(),
            Some(json!({"endpoint": {"service_id": x.service_id, "interface": "public", "url": "http://x"}})),
            403, ADMIN_ONLY),
        case("identity", "DELETE", "/v3/endpoints/{id}", format!("/v3/endpoints/{}", x.endpoint_id), None, 403, ADMIN_ONLY),
    ]);
    v
}

/// Write routes with no reader/other-project case, and why.
const NOT_IN_MATRIX: &[(&str, &str, &str, &str)] = &[
    (
        "identity",
        "POST",
        "/v3/auth/tokens",
        "authentication: anyone with credentials",
    ),
    (
        "compute",
        "POST",
        "/v2.1/os-keypairs",
        "key pairs are the user's own (Nova: admin or user_id): a reader may create one; checked below",
    ),
];

impl Api {
    /// Sends a matrix case as `who`: (status, body text).
    async fn send(&self, f: &Fleet, c: &Case, who: &Caller) -> (u16, String) {
        let base = match c.service {
            "compute" => format!("{}/v2.1", self.compute),
            "network" => format!("{}/v2.0", self.network),
            "image" => f.cloud.base(ServiceKind::Image),
            "identity" => self.identity.clone(),
            "placement" => f.cloud.base(ServiceKind::Placement),
            other => panic!("no base for {other}"),
        };
        let method = Method::from_bytes(c.method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{base}{}", c.path))
            .header("x-auth-token", &who.token);
        match c.service {
            "compute" => {
                req = req.header(
                    "openstack-api-version",
                    format!("compute {}", c.mv.unwrap_or("2.90")),
                )
            }
            "placement" => {
                req = req.header(
                    "openstack-api-version",
                    format!("placement {}", c.mv.unwrap_or("1.24")),
                )
            }
            _ => {}
        }
        let mut typed = false;
        for (k, v) in &c.headers {
            typed |= *k == "content-type";
            req = req.header(*k, v);
        }
        if let Some(b) = &c.body {
            req = if typed {
                req.body(b.to_string())
            } else {
                req.json(b)
            };
        } else if typed {
            req = req.body("data");
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// POST/PUT a JSON body as `who` to `url`; the body of a 2xx answer.
    async fn made(&self, who: &Caller, method: Method, url: String, body: Value) -> Value {
        let (s, v) = self
            .call(who, method.clone(), url.clone(), Some(body))
            .await;
        assert!(s.is_success(), "{method} {url}: {s} {v}");
        v
    }
}

/// The policy matrix: every write route of every API (found in the
/// routers' source, every server action in the action handler), sent by a
/// reader of the project that owns the target (403) and by a member of
/// another project (404 for a project's objects, 403 for operators'
/// operations), as Nova, Neutron, Glance, Placement and Keystone default.
async fn readers_and_other_projects_never_write(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 1, 8, 8192, 100)],
        |_| {},
    )
    .await;
    let api = Api::of(&f.cloud);
    let admin = api.admin().await;
    let compute = |p: &str| format!("{}/v2.1{p}", api.compute);
    let network = |p: &str| format!("{}/v2.0{p}", api.network);
    let image = |p: &str| format!("{}{p}", f.cloud.base(ServiceKind::Image));
    let identity = |p: &str| format!("{}{p}", api.identity);

    let flavor = api
        .made(
            &admin,
            Method::POST,
            compute("/flavors"),
            json!({"flavor": {"name": "m1", "ram": 512, "vcpus": 1, "disk": 1}}),
        )
        .await["flavor"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let aggregate = api
        .made(
            &admin,
            Method::POST,
            compute("/os-aggregates"),
            json!({"aggregate": {"name": "ag"}}),
        )
        .await["aggregate"]["id"]
        .to_string();
    let amy = api.user_in(&admin, "proj-a", "amy", "member").await;
    let rita = {
        // A reader of the same project.
        let (_, u) = api
            .keystone(&admin, Method::POST, "/users",
                Some(json!({"user": {"name": "rita", "password": "pw-of-user", "domain_id": "default"}})))
            .await;
        let (_, roles) = api
            .keystone(&admin, Method::GET, "/roles?name=reader", None)
            .await;
        let (s, _) = api
            .keystone(
                &admin,
                Method::PUT,
                &format!(
                    "/projects/{}/users/{}/roles/{}",
                    amy.project_id,
                    u["user"]["id"].as_str().unwrap(),
                    roles["roles"][0]["id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        common::password_login(&api.http, &api.identity, "rita", "pw-of-user", "proj-a").await
    };
    let bob = api.user_in(&admin, "proj-b", "bob", "member").await;
    let carl = api.user_in(&admin, "proj-c", "carl", "member").await;
    let (_, roles) = api
        .keystone(&admin, Method::GET, "/roles?name=admin", None)
        .await;
    let role_admin = roles["roles"][0]["id"].as_str().unwrap().to_owned();
    let (_, services) = api.keystone(&admin, Method::GET, "/services", None).await;
    let service_id = services["services"][0]["id"].as_str().unwrap().to_owned();
    let (_, endpoints) = api.keystone(&admin, Method::GET, "/endpoints", None).await;
    let endpoint_id = endpoints["endpoints"][0]["id"].as_str().unwrap().to_owned();

    // Project A's objects.
    let net = api.network_with_subnet(&amy, "net-a", "10.30.0.0/24").await;
    let (_, subnets) = api
        .neutron(
            &amy,
            Method::GET,
            &format!("/subnets?network_id={net}"),
            None,
        )
        .await;
    let subnet = subnets["subnets"][0]["id"].as_str().unwrap().to_owned();
    let port = api
        .made(
            &amy,
            Method::POST,
            network("/ports"),
            json!({"port": {"network_id": net}}),
        )
        .await["port"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let group = api
        .made(
            &amy,
            Method::POST,
            network("/security-groups"),
            json!({"security_group": {"name": "sg-a"}}),
        )
        .await["security_group"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rule = api
        .made(
            &amy,
            Method::POST,
            network("/security-group-rules"),
            json!({"security_group_rule": {"security_group_id": group, "direction": "ingress",
                "protocol": "tcp", "port_range_min": 22, "port_range_max": 22}}),
        )
        .await["security_group_rule"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = api
        .made(&amy, Method::POST, compute("/servers"),
            json!({"server": {"name": "vm-a", "imageRef": f.image_id, "flavorRef": flavor, "networks": "none",
                "metadata": {"k": "v"}, "tags": ["t"]}}))
        .await["server"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = api.settle(&amy, &server).await;
    assert_eq!(view["status"], "ACTIVE", "{view}");
    let server_group = api
        .made(
            &amy,
            Method::POST,
            compute("/os-server-groups"),
            json!({"server_group": {"name": "g", "policy": "anti-affinity"}}),
        )
        .await["server_group"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.made(
        &amy,
        Method::POST,
        compute("/os-keypairs"),
        json!({"keypair": {"name": "kp-amy"}}),
    )
    .await;
    let mk_image = |visibility: &'static str| {
        let api = &api;
        let amy = &amy;
        let url = image("/v2/images");
        async move {
            api.made(
                amy,
                Method::POST,
                url,
                json!({"name": "img-a", "disk_format": "raw", "container_format": "bare",
                    "visibility": visibility, "tags": ["t"]}),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let img = mk_image("shared").await;
    let queued = mk_image("private").await;
    api.made(
        &amy,
        Method::POST,
        image(&format!("/v2/images/{img}/members")),
        json!({"member": carl.project_id}),
    )
    .await;
    let _ = identity;

    let x = Fixture {
        project_a: amy.project_id.clone(),
        project_c: carl.project_id.clone(),
        amy: amy.clone(),
        server: server.clone(),
        flavor,
        group: server_group,
        image: img,
        queued_image: queued,
        network: net,
        subnet,
        port,
        security_group: group,
        rule,
        aggregate,
        role_admin,
        service_id,
        endpoint_id,
    };
    let all = cases(&x);

    // The matrix covers every write route and every server action.
    let routes = write_routes();
    assert!(routes.len() > 90, "found {} write routes", routes.len());
    let mut missing = Vec::new();
    for (service, method, path) in &routes {
        let covered = all
            .iter()
            .any(|c| c.service == *service && c.method == method && c.route == path)
            || NOT_IN_MATRIX
                .iter()
                .any(|(s, m, p, _)| s == service && m == method && p == path);
        if !covered {
            missing.push(format!("{service} {method} {path}"));
        }
    }
    for c in &all {
        assert!(
            routes
                .iter()
                .any(|(s, m, p)| *s == c.service && m == c.method && p == c.route),
            "a case for a route that does not exist: {} {} {}",
            c.service,
            c.method,
            c.route
        );
    }
    let actions = server_actions();
    assert!(actions.len() > 20, "found actions {actions:?}");
    for a in &actions {
        if !all.iter().any(|c| c.action == Some(a.as_str())) {
            missing.push(format!("server action {a}"));
        }
    }
    assert!(
        missing.is_empty(),
        "write operations without a policy case:\n{}",
        missing.join("\n")
    );

    // Every case, as the reader and as the other project's member.
    let mut wrong = Vec::new();
    for c in &all {
        let what = format!(
            "{} {} {}{}",
            c.service,
            c.method,
            c.path,
            c.action.map(|a| format!(" ({a})")).unwrap_or_default()
        );
        let (got, body) = api.send(&f, c, &rita).await;
        if got != c.reader {
            wrong.push(format!("reader: {what}: {got} (want {}) {body}", c.reader));
        }
        if let Some(want) = c.other {
            let (got, body) = api.send(&f, c, &bob).await;
            if got != want {
                wrong.push(format!("other project: {what}: {got} (want {want}) {body}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        all.len(),
        wrong.join("\n")
    );

    // Nothing of A's changed.
    let view = api.settle(&amy, &server).await;
    assert_eq!(view["name"], "vm-a");
    assert_eq!(view["status"], "ACTIVE");
    assert_eq!(view["metadata"], json!({"k": "v"}));
    // Key pairs are the user's own, in Nova's rule: the reader has its own.
    let (s, kp) = api
        .nova(
            &rita,
            Method::POST,
            "/os-keypairs",
            Some(json!({"keypair": {"name": "kp-rita"}})),
        )
        .await;
    assert!(s.is_success(), "{kp}");
    let (s, _) = api
        .nova(&rita, Method::DELETE, "/os-keypairs/kp-rita", None)
        .await;
    assert!(s.is_success());
    f.stop().await;
}

// ---- races and encodings -------------------------------------------------------------------

/// A NUL character in a JSON string, a path or a query string is a 400 in
/// each API's own error body, on both databases (PostgreSQL refuses NUL in
/// text; SQLite would store it).
async fn nul_characters_are_400_everywhere(backend: Backend) {
    let env = common::Env::start(backend).await;
    let admin = env.admin().await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let nul = "a\u{0}b";
    let check = |service: &str, status: u16, body: &str| {
        assert_eq!(status, 400, "{service}: {body}");
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let ok = match service {
            "network" => v["NeutronError"]["message"].is_string(),
            "identity" => v["error"]["code"] == 400,
            "placement" => v["errors"][0]["status"] == 400,
            _ => v["badRequest"]["code"] == 400,
        };
        assert!(ok, "{service}: not its error body: {body}");
    };
    let send = |who: &Caller, method: Method, url: String, body: Option<Value>| {
        let mut req = env
            .http
            .request(method, url)
            .header("x-auth-token", &who.token)
            .header("openstack-api-version", "placement 1.24");
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.text().await.unwrap())
        }
    };
    let n = format!("{}/v2.0", env.network);
    let c = format!("{}/v2.1", env.compute);
    let i = env.identity.clone();
    let g = env.image.clone();
    let p = env.placement.clone();
    let bodies: Vec<(&str, &Caller, String, Value)> = vec![
        (
            "network",
            &alice,
            format!("{n}/security-groups"),
            json!({"security_group": {"name": nul}}),
        ),
        (
            "network",
            &alice,
            format!("{n}/networks"),
            json!({"network": {"name": nul}}),
        ),
        (
            "network",
            &alice,
            format!("{n}/networks"),
            json!({"network": {"name": "x", "description": nul}}),
        ),
        (
            "compute",
            &alice,
            format!("{c}/os-keypairs"),
            json!({"keypair": {"name": nul}}),
        ),
        (
            "compute",
            &admin,
            format!("{c}/flavors"),
            json!({"flavor": {"name": nul, "ram": 64, "vcpus": 1, "disk": 1}}),
        ),
        (
            "compute",
            &alice,
            format!("{c}/os-server-groups"),
            json!({"server_group": {"name": nul, "policies": ["affinity"]}}),
        ),
        (
            "identity",
            &admin,
            format!("{i}/v3/projects"),
            json!({"project": {"name": nul, "domain_id": "default"}}),
        ),
        (
            "identity",
            &admin,
            format!("{i}/v3/users"),
            json!({"user": {"name": "u", "domain_id": "default", "description": nul}}),
        ),
        (
            "image",
            &alice,
            format!("{g}/v2/images"),
            json!({"name": nul, "disk_format": "raw", "container_format": "bare"}),
        ),
        (
            "image",
            &alice,
            format!("{g}/v2/images"),
            json!({"name": "x", "disk_format": "raw", "container_format": "bare", nul: "v"}),
        ),
        (
            "placement",
            &admin,
            format!("{p}/resource_providers"),
            json!({"name": nul}),
        ),
    ];
    for (service, who, url, body) in bodies {
        let (s, text) = send(who, Method::POST, url.clone(), Some(body)).await;
        check(service, s, &text);
    }
    // In a path or a query string.
    for (service, url) in [
        ("compute", format!("{c}/servers/a%00b")),
        ("compute", format!("{c}/servers?name=a%00b")),
        ("compute", format!("{c}/os-keypairs/a%00b")),
        ("network", format!("{n}/networks/a%00b")),
        ("network", format!("{n}/ports?device_id=a%00b")),
        ("image", format!("{g}/v2/images/a%00b")),
        ("image", format!("{g}/v2/images?name=a%00b")),
        ("identity", format!("{i}/v3/projects?name=a%00b")),
        ("identity", format!("{i}/v3/users/a%00b")),
        ("placement", format!("{p}/resource_providers/a%00b")),
    ] {
        let (s, text) = send(&admin, Method::GET, url.clone(), None).await;
        check(service, s, &text);
    }
    // Logging in with one: 400, not a 500 from the user look-up.
    let r = env
        .http
        .post(format!("{i}/v3/auth/tokens"))
        .json(
            &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": nul, "domain": {"id": "default"}, "password": "x"}}}}}),
        )
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    check("identity", s, &r.text().await.unwrap());
    // A backslash-u text that is not a NUL is just text.
    let r = env
        .neutron(
            &alice,
            Method::POST,
            "/security-groups",
            Some(json!({"security_group": {"name": "back\\u0000slash"}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    env.stop().await;
}

/// A value the database refuses (PostgreSQL's SQLSTATE class 22, "data
/// exception") is the request's fault: 400, never 500.
async fn data_errors_of_the_database_are_400(backend: Backend) {
    use mica_controller::error::{Error, Kind};
    let env = common::Env::start(backend).await;
    let pool = env.cloud.app.db.pool();
    let nul = sqlx::query("SELECT id FROM projects WHERE name = $1")
        .bind("a\u{0}b")
        .fetch_optional(pool)
        .await;
    match backend {
        Backend::Postgres => {
            let e = Error::from(nul.map(|_| ()).expect_err("PostgreSQL refuses NUL in text"));
            assert!(e.is(Kind::BadRequest), "{e:?}");
        }
        Backend::Sqlite => assert!(nul.is_ok()),
    }
    if backend == Backend::Postgres {
        let r = sqlx::query("SELECT CAST($1 AS BIGINT)")
            .bind("not a number")
            .fetch_optional(pool)
            .await;
        let e = Error::from(r.map(|_| ()).expect_err("not a number"));
        assert!(e.is(Kind::BadRequest), "{e:?}");
        // Not every database error is the request's fault.
        let r = sqlx::query("SELECT * FROM no_such_table")
            .fetch_optional(pool)
            .await;
        let e = Error::from(r.map(|_| ()).expect_err("no table"));
        assert!(e.is(Kind::Internal), "{e:?}");
    }
    env.stop().await;
}

/// Of parallel deletes of one security group exactly one answers 204 and
/// the others 404 (the delete's own row count decides).
async fn parallel_deletes_of_one_security_group(backend: Backend) {
    let env = common::Env::start(backend).await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    for round in 0..5 {
        let r = env
            .neutron(
                &alice,
                Method::POST,
                "/security-groups",
                Some(json!({"security_group": {"name": format!("sg-{round}")}})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let id = r.json::<Value>().await.unwrap()["security_group"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(6));
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let http = env.http.clone();
            let url = format!("{}/v2.0/security-groups/{id}", env.network);
            let token = alice.token.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = http
                    .delete(url)
                    .header("x-auth-token", token)
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                let body = r.text().await.unwrap();
                (s, body)
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        let ok = got.iter().filter(|(s, _)| *s == 204).count();
        assert_eq!(ok, 1, "round {round}: {got:?}");
        for (s, body) in &got {
            assert!(*s == 204 || *s == 404, "round {round}: {s} {body}");
            if *s == 404 {
                assert!(body.contains("SecurityGroupNotFound"), "{body}");
            }
        }
    }
    env.stop().await;
}

// ---- slow clients and overload -----------------------------------------------------------------

/// `host:port` of a base URL.
fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

/// Reads until the server closes the connection (or `limit` passes):
/// (what it sent, how long it took to close; `None`: still open).
async fn read_until_closed(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    started: Instant,
    limit: Duration,
) -> (String, Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), None),
        }
    }
}

/// The three slowloris shapes on every API port, with 2-second time-outs:
/// a request head that never ends (sent a byte at a time), a body shorter
/// than its Content-Length (408, the API's error body), and an idle
/// kept-alive connection: each is closed within the time-out (and not
/// long before it).
async fn slow_clients_are_cut_off(backend: Backend) {
    use tokio::io::AsyncWriteExt;
    let env = common::Env::start_with(backend, |c| {
        c.api.header_timeout_secs = 2;
        c.api.body_timeout_secs = 2;
    })
    .await;
    let limit = Duration::from_secs(2);
    let within = |took: Option<Duration>, what: &str| {
        let took = took.unwrap_or_else(|| panic!("{what}: still open after 10 s"));
        assert!(
            took >= Duration::from_millis(1500) && took <= limit + Duration::from_millis(1500),
            "{what}: closed after {took:?}"
        );
    };
    for (api, base, path) in [
        ("identity", &env.identity, "/v3"),
        ("compute", &env.compute, "/v2.1"),
        ("image", &env.image, "/v2/images"),
        ("network", &env.network, "/v2.0/networks"),
        ("placement", &env.placement, "/"),
    ] {
        let addr = addr_of(base);
        // 1. A head that trickles in and never ends.
        let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            let _ = w
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n").as_bytes())
                .await;
            for i in 0..40 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if w.write_all(format!("X-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let (_, took) = read_until_closed(&mut r, started, Duration::from_secs(10)).await;
        within(took, &format!("{api}: slow head"));
        trickle.abort();

        // 2. A body shorter than its Content-Length.
        let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let started = Instant::now();
        let post = match api {
            // Keystone reads a login's body before any token.
            "identity" => "/v3/auth/tokens",
            "image" => "/v2/images",
            _ => path,
        };
        w.write_all(
            format!(
                "POST {post} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n{{\"a\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let (text, took) = read_until_closed(&mut r, started, Duration::from_secs(10)).await;
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // Without a token (or on a GET-only path) the other APIs answer at
        // once and close, the body unread; a read of the body times out
        // with 408.
        match status {
            408 => within(took, &format!("{api}: short body")),
            400..=499 => assert!(
                took.is_some_and(|t| t < Duration::from_millis(1500)),
                "{api}: {status} but open: {took:?}"
            ),
            _ => panic!("{api}: short body answered {text:?}"),
        }
        if api == "identity" {
            assert_eq!(status, 408, "{text}");
        }

        // 3. An idle kept-alive connection after a complete request.
        let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let started = Instant::now();
        let (text, took) = read_until_closed(&mut r, started, Duration::from_secs(10)).await;
        assert!(text.starts_with("HTTP/1.1 "), "{api}: {text:?}");
        within(took, &format!("{api}: idle keep-alive"));
    }

    // A body that stops, on an API that reads it after authentication: 408
    // in Keystone's body.
    let admin = env.admin().await;
    let s = tokio::net::TcpStream::connect(addr_of(&env.identity))
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let started = Instant::now();
    w.write_all(
        format!(
            "POST /v3/projects HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"project\":",
            admin.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (text, took) = read_until_closed(&mut r, started, Duration::from_secs(10)).await;
    within(took, "identity: authenticated short body");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], 408, "{text}");
    // A stalled image upload: 408 too.
    let alice = env.user_with_role("p1", "alice", "member").await;
    let r = env
        .http
        .post(format!("{}/v2/images", env.image))
        .header("x-auth-token", &alice.token)
        .json(&json!({"name": "i", "disk_format": "raw", "container_format": "bare"}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = tokio::net::TcpStream::connect(addr_of(&env.image))
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let started = Instant::now();
    w.write_all(
        format!(
            "PUT /v2/images/{id}/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\nsome bytes",
            alice.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (text, took) = read_until_closed(&mut r, started, Duration::from_secs(10)).await;
    within(took, "image: stalled upload");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    env.stop().await;
}

/// A listener holds `[api] max_connections` connections; one more gets 503
/// with Retry-After in the API's error body, and a freed slot serves again.
async fn connections_beyond_the_cap_get_503(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = common::Env::start_with(backend, |c| c.api.max_connections = 3).await;
    let addr = addr_of(&env.compute);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let get = |addr: String| async move {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /v2.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut text)).await;
        String::from_utf8_lossy(&text).into_owned()
    };
    let text = get(addr.clone()).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["serviceUnavailable"]["code"], 503, "{text}");
    // Other listeners have their own slots.
    let r = env
        .http
        .get(format!("{}/v3", env.identity))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A freed slot serves again.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = get(addr.clone()).await;
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    env.stop().await;
}

/// Argon2 runs are capped (`[identity] max_concurrent_password_checks`):
/// a login that can't get a turn within `password_check_wait_ms` gets 503
/// with Retry-After in Keystone's body; one that gets its turn in time
/// goes through.
async fn password_checks_are_capped(backend: Backend) {
    let env = common::Env::start_with(backend, |c| {
        c.identity.max_concurrent_password_checks = 1;
        c.identity.password_check_wait_ms = 300;
    })
    .await;
    let login = || {
        env.http
            .post(format!("{}/v3/auth/tokens", env.identity))
            .json(
                &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
                "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}),
            )
            .send()
    };
    // Every turn taken: refused after the wait.
    let turns = env.cloud.app.password_checks.clone();
    let permit = turns.clone().acquire_owned().await.unwrap();
    let started = Instant::now();
    let r = login().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 503, "{v}");
    // A turn freed while waiting: served.
    let pending = tokio::spawn(login());
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(permit);
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Many at once: some may wait or be refused, none fails otherwise,
    // and the cap holds turns for nobody afterwards.
    let all = futures_util::future::join_all((0..6).map(|_| login())).await;
    for r in all {
        let s = r.unwrap().status();
        assert!(
            s == StatusCode::CREATED || s == StatusCode::SERVICE_UNAVAILABLE,
            "{s}"
        );
    }
    assert_eq!(turns.available_permits(), 1);
    env.stop().await;
}
