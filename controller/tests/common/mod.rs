//! Shared helpers of the controller's integration tests: a running cloud on
//! either database, an HTTP client, users with roles, error-body checks.

#![allow(dead_code)]

use mica_controller::app::ServiceKind;
use mica_controller::db::Backend;
use mica_controller::testing::{ADMIN_PASSWORD, TestCloud};
use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

/// Generates one test per database for an `async fn(Backend)`.
#[macro_export]
macro_rules! both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    super::$name(mica_controller::db::Backend::Postgres).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name(mica_controller::db::Backend::Sqlite).await
                }
            }
        )*
    };
}

/// A cloud and a client for it.
pub struct Env {
    pub cloud: TestCloud,
    pub http: reqwest::Client,
    pub identity: String,
    pub image: String,
    pub placement: String,
    pub compute: String,
    pub network: String,
}

/// Someone with a token.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token: String,
    pub user_id: String,
    pub project_id: String,
}

impl Env {
    pub async fn start(backend: Backend) -> Env {
        Env::start_with(backend, |_| {}).await
    }

    pub async fn start_with(
        backend: Backend,
        tweak: impl FnOnce(&mut mica_controller::config::Config),
    ) -> Env {
        let cloud = TestCloud::start(backend, tweak).await;
        Env {
            http: reqwest::Client::new(),
            identity: cloud.base(ServiceKind::Identity),
            image: cloud.base(ServiceKind::Image),
            placement: cloud.base(ServiceKind::Placement),
            compute: cloud.base(ServiceKind::Compute),
            network: cloud.base(ServiceKind::Network),
            cloud,
        }
    }

    pub async fn stop(self) {
        self.cloud.stop().await;
    }

    /// A password token for `user` scoped to `project` (both by name).
    pub async fn login(&self, user: &str, password: &str, project: &str) -> Caller {
        password_login(&self.http, &self.identity, user, password, project).await
    }

    pub async fn admin(&self) -> Caller {
        self.login("admin", ADMIN_PASSWORD, "admin").await
    }

    /// Creates project `project` (if needed) and user `user` with `role` on
    /// it, and logs in.
    pub async fn user_with_role(&self, project: &str, user: &str, role: &str) -> Caller {
        let admin = self.admin().await;
        let found = self
            .call(
                &admin,
                Method::GET,
                &format!("{}/v3/projects?name={project}", self.identity),
                None,
            )
            .await;
        let body: Value = found.json().await.unwrap();
        let project_id = match body["projects"].as_array().unwrap().first() {
            Some(p) => p["id"].as_str().unwrap().to_owned(),
            None => {
                let r = self
                    .call(
                        &admin,
                        Method::POST,
                        &format!("{}/v3/projects", self.identity),
                        Some(json!({"project": {"name": project, "domain_id": "default"}})),
                    )
                    .await;
                assert_eq!(r.status(), StatusCode::CREATED);
                r.json::<Value>().await.unwrap()["project"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        let r = self
            .call(
                &admin,
                Method::POST,
                &format!("{}/v3/users", self.identity),
                Some(json!({"user": {"name": user, "password": "pw-of-user", "domain_id": "default"}})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "creating user {user}");
        let user_id = r.json::<Value>().await.unwrap()["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let roles: Value = self
            .call(
                &admin,
                Method::GET,
                &format!("{}/v3/roles?name={role}", self.identity),
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        let role_id = roles["roles"][0]["id"].as_str().unwrap().to_owned();
        let r = self
            .call(
                &admin,
                Method::PUT,
                &format!(
                    "{}/v3/projects/{project_id}/users/{user_id}/roles/{role_id}",
                    self.identity
                ),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        self.login(user, "pw-of-user", project).await
    }

    /// A JSON request with the caller's token.
    pub async fn call(
        &self,
        who: &Caller,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .http
            .request(method, url)
            .header("x-auth-token", &who.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// A placement request at microversion `1.minor`.
    pub async fn placement(
        &self,
        who: &Caller,
        method: Method,
        path: &str,
        minor: u32,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.placement))
            .header("x-auth-token", &who.token)
            .header("openstack-api-version", format!("placement 1.{minor}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }
}

impl Env {
    /// A compute request at microversion `2.minor` (`None`: no header).
    pub async fn nova(
        &self,
        who: &Caller,
        method: Method,
        path: &str,
        minor: Option<u32>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .http
            .request(method, format!("{}/v2.1{path}", self.compute))
            .header("x-auth-token", &who.token);
        if let Some(m) = minor {
            req = req.header("openstack-api-version", format!("compute 2.{m}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// A compute request at `minor` whose status must be `status`; returns the body.
    pub async fn nova_ok(
        &self,
        who: &Caller,
        method: Method,
        path: &str,
        minor: u32,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let r = self
            .nova(who, method.clone(), path, Some(minor), body)
            .await;
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(got, status, "{method} {path} at 2.{minor}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// A network API request.
    pub async fn neutron(
        &self,
        who: &Caller,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .http
            .request(method, format!("{}/v2.0{path}", self.network))
            .header("x-auth-token", &who.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }
}

/// Checks a Nova-style error body (`{"<name>": {"code", "message"}}`) and
/// returns its message.
pub async fn nova_error(resp: Response, status: u16, name: &str) -> String {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    let inner = &body[name];
    assert_eq!(inner["code"], status, "body {body}");
    assert!(
        inner["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body {body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "body {body}");
    inner["message"].as_str().unwrap().to_owned()
}

/// Checks Keystone's error body and returns its message.
pub async fn keystone_error(resp: Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status, "status");
    if status == 401 {
        let www = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(www.starts_with("Keystone uri="), "{www}");
    }
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], status, "body {body}");
    assert!(body["error"]["title"].is_string(), "body {body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// Checks placement's error body; returns (code, detail).
pub async fn placement_error(resp: Response, status: u16) -> (Option<String>, String) {
    assert_eq!(resp.status().as_u16(), status, "status");
    let body: Value = resp.json().await.unwrap();
    let e = &body["errors"][0];
    assert_eq!(e["status"], status, "body {body}");
    assert!(
        e["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req-")),
        "body {body}"
    );
    (
        e["code"].as_str().map(str::to_owned),
        e["detail"].as_str().unwrap().to_owned(),
    )
}

/// A password token for `user` scoped to `project` (both by name), from the
/// identity API at `identity`.
pub async fn password_login(
    http: &reqwest::Client,
    identity: &str,
    user: &str,
    password: &str,
    project: &str,
) -> Caller {
    let resp = http
        .post(format!("{identity}/v3/auth/tokens"))
        .json(&json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "login of {user}");
    let token = resp.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    Caller {
        token,
        user_id: body["token"]["user"]["id"].as_str().unwrap().to_owned(),
        project_id: body["token"]["project"]["id"].as_str().unwrap().to_owned(),
    }
}

/// Every `.rs` file below `dir` (source scans: where SQL or RNG calls live).
pub fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// HTTP to a cloud's identity, compute and network APIs (compute at 2.90).
pub struct Api {
    pub http: reqwest::Client,
    pub identity: String,
    pub compute: String,
    pub network: String,
}

impl Api {
    pub fn of(cloud: &TestCloud) -> Api {
        Api {
            http: reqwest::Client::new(),
            identity: cloud.base(ServiceKind::Identity),
            compute: cloud.base(ServiceKind::Compute),
            network: cloud.base(ServiceKind::Network),
        }
    }

    pub async fn call(
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
            .header("openstack-api-version", "compute 2.90");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn nova(
        &self,
        who: &Caller,
        m: Method,
        path: &str,
        b: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(who, m, format!("{}/v2.1{path}", self.compute), b)
            .await
    }

    pub async fn neutron(
        &self,
        who: &Caller,
        m: Method,
        path: &str,
        b: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(who, m, format!("{}/v2.0{path}", self.network), b)
            .await
    }

    pub async fn keystone(
        &self,
        who: &Caller,
        m: Method,
        path: &str,
        b: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(who, m, format!("{}/v3{path}", self.identity), b)
            .await
    }

    pub async fn admin(&self) -> Caller {
        password_login(&self.http, &self.identity, "admin", ADMIN_PASSWORD, "admin").await
    }

    /// A flavor of 512 MiB, 1 vCPU and 1 GB made by `admin`: its id.
    pub async fn flavor(&self, admin: &Caller, name: &str) -> String {
        let (s, f) = self
            .nova(
                admin,
                Method::POST,
                "/flavors",
                Some(json!({"flavor": {"name": name, "ram": 512, "vcpus": 1, "disk": 1}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{f}");
        f["flavor"]["id"].as_str().unwrap().to_owned()
    }

    /// A new project with a user holding `role` on it, logged in.
    pub async fn user_in(&self, admin: &Caller, project: &str, user: &str, role: &str) -> Caller {
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
        password_login(&self.http, &self.identity, user, "pw-of-user", project).await
    }

    /// A network with one subnet of `cidr`: (network id, its name).
    pub async fn network_with_subnet(&self, who: &Caller, name: &str, cidr: &str) -> String {
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
    pub async fn settle(&self, who: &Caller, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
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
