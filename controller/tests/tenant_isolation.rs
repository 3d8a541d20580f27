//! Tenant isolation (issue 15) on PostgreSQL and SQLite, with the roles in
//! this process and simulated agents: a port's client-set `device_id` never
//! binds it into another project's server, neither through the port API
//! nor in what the conductor hands to the compute host.

mod common;
mod fleet;

use std::time::{Duration, Instant};

use common::Caller;
use fleet::{Bus, Fleet, Hosts};
use mica_controller::app::ServiceKind;
use mica_controller::db::Backend;
use mica_controller::testing::ADMIN_PASSWORD;
use mica_rpc::Topic;
use mica_rpc::conductor::{ScheduleAndBuild, ScheduleAndBuildRequest};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

both_databases!(ports_are_bound_only_by_the_compute_api);

/// HTTP to the fleet's cloud.
struct Api {
    http: reqwest::Client,
    identity: String,
    compute: String,
    network: String,
}

impl Api {
    fn of(f: &Fleet) -> Api {
        Api {
            http: reqwest::Client::new(),
            identity: f.cloud.base(ServiceKind::Identity),
            compute: f.cloud.base(ServiceKind::Compute),
            network: f.cloud.base(ServiceKind::Network),
        }
    }

    async fn call(
        &self,
        who: &Caller,
        method: Method,
        url: String,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, url)
            .header("x-auth-token", &who.token)
            .header("openstack-api-version", "compute 2.47");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn nova(
        &self,
        who: &Caller,
        m: Method,
        path: &str,
        b: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(who, m, format!("{}/v2.1{path}", self.compute), b)
            .await
    }

    async fn neutron(
        &self,
        who: &Caller,
        m: Method,
        path: &str,
        b: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(who, m, format!("{}/v2.0{path}", self.network), b)
            .await
    }

    async fn keystone(
        &self,
        who: &Caller,
        m: Method,
        path: &str,
        b: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(who, m, format!("{}/v3{path}", self.identity), b)
            .await
    }

    async fn admin(&self) -> Caller {
        common::password_login(&self.http, &self.identity, "admin", ADMIN_PASSWORD, "admin").await
    }

    /// A new project with a user holding `role` on it, logged in.
    async fn user_in(&self, admin: &Caller, project: &str, user: &str, role: &str) -> Caller {
        let (s, p) = self
            .keystone(
                admin,
                Method::POST,
                "/projects",
                Some(json!({"project": {"name": project, "domain_id": "default"}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        let (s, u) = self
            .keystone(
                admin,
                Method::POST,
                "/users",
                Some(json!({"user": {"name": user, "password": "pw-of-user", "domain_id": "default"}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{u}");
        let (_, roles) = self
            .keystone(admin, Method::GET, &format!("/roles?name={role}"), None)
            .await;
        let (s, _) = self
            .keystone(
                admin,
                Method::PUT,
                &format!(
                    "/projects/{}/users/{}/roles/{}",
                    p["project"]["id"].as_str().unwrap(),
                    u["user"]["id"].as_str().unwrap(),
                    roles["roles"][0]["id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        common::password_login(&self.http, &self.identity, user, "pw-of-user", project).await
    }

    /// A network with one subnet of `cidr`: (network id, its name).
    async fn network_with_subnet(&self, who: &Caller, name: &str, cidr: &str) -> String {
        let (s, n) = self
            .neutron(
                who,
                Method::POST,
                "/networks",
                Some(json!({"network": {"name": name}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{n}");
        let id = n["network"]["id"].as_str().unwrap().to_owned();
        let (s, sn) = self
            .neutron(
                who,
                Method::POST,
                "/subnets",
                Some(json!({"subnet": {"network_id": id, "cidr": cidr, "ip_version": 4}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{sn}");
        id
    }

    /// Waits until a server leaves BUILD; returns its view.
    async fn settle(&self, who: &Caller, id: &str) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let (s, v) = self
                .nova(who, Method::GET, &format!("/servers/{id}"), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if v["server"]["status"] != "BUILD" {
                return v["server"].clone();
            }
            assert!(Instant::now() < deadline, "server {id} still building");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

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
    let api = Api::of(&f);
    let admin = api.admin().await;
    let (s, flavor) = api
        .nova(
            &admin,
            Method::POST,
            "/flavors",
            Some(json!({"flavor": {"name": "t1", "ram": 512, "vcpus": 1, "disk": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{flavor}");
    let flavor = flavor["flavor"]["id"].as_str().unwrap().to_owned();
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
