//! Remote consoles on PostgreSQL and SQLite: the compute API's
//! `remote-consoles` and `os-get*Console` (tokens, URLs, Nova's errors),
//! the console proxy (WebSocket upgrade, token checks before any RPC to a
//! compute host, piping through a simulated agent's real console channel to
//! a Unix socket the test stands up, the noVNC files and path traversal),
//! and the real `openstack console url show` / `console log show`.

mod common;
mod fleet;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleet::{Bus, Fleet, Hosts};
use futures_util::{SinkExt, StreamExt};
use mica_controller::app::ServiceKind;
use mica_controller::db::Backend;
use mica_controller::testing::ADMIN_PASSWORD;
use mica_rpc::compute::ConsoleKind;
use mica_rpc::conductor::InstanceAction;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const T: Duration = Duration::from_secs(60);

both_databases!(
    remote_consoles_and_the_proxy,
    expired_tokens_are_refused,
    readers_get_no_console
);

/// A Unix listener standing in for a VMM's serial socket: it answers
/// what it gets, upper-cased.
fn fake_serial(dir: &Path) -> PathBuf {
    let path = dir.join("fake.serial");
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    path
}

/// A pretend noVNC folder, and a file next to it that must stay private.
fn fake_novnc(dir: &Path) -> PathBuf {
    let novnc = dir.join("novnc");
    std::fs::create_dir_all(novnc.join("core")).unwrap();
    std::fs::write(novnc.join("core/rfb.js"), "export default class RFB {}").unwrap();
    std::fs::write(dir.join("secret.txt"), "do not serve").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), novnc.join("link.txt")).unwrap();
    novnc
}

struct Api {
    http: reqwest::Client,
    compute: String,
    identity: String,
}

impl Api {
    fn of(f: &Fleet) -> Api {
        Api {
            http: reqwest::Client::new(),
            compute: f.cloud.base(ServiceKind::Compute),
            identity: f.cloud.base(ServiceKind::Identity),
        }
    }

    async fn login(&self, user: &str, password: &str, project: &str) -> String {
        common::password_login(&self.http, &self.identity, user, password, project)
            .await
            .token
    }

    /// A member of a new project.
    async fn other_member(&self, admin: &str) -> String {
        let post = |path: &str, body: Value| {
            self.http
                .post(format!("{}{path}", self.identity))
                .header("x-auth-token", admin)
                .json(&body)
                .send()
        };
        let p: Value = post(
            "/v3/projects",
            json!({"project": {"name": "other", "domain_id": "default"}}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let u: Value = post(
            "/v3/users",
            json!({"user": {"name": "eve", "password": "pw-of-eve", "domain_id": "default"}}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let roles: Value = self
            .http
            .get(format!("{}/v3/roles?name=member", self.identity))
            .header("x-auth-token", admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r = self
            .http
            .put(format!(
                "{}/v3/projects/{}/users/{}/roles/{}",
                self.identity,
                p["project"]["id"].as_str().unwrap(),
                u["user"]["id"].as_str().unwrap(),
                roles["roles"][0]["id"].as_str().unwrap()
            ))
            .header("x-auth-token", admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        self.login("eve", "pw-of-eve", "other").await
    }

    /// A new user with `role` on the admin project (the fleet's
    /// instances are there), logged in.
    async fn admin_project_user(&self, admin: &str, user: &str, role: &str) -> String {
        let get = |path: String| {
            self.http
                .get(format!("{}{path}", self.identity))
                .header("x-auth-token", admin)
                .send()
        };
        let projects: Value = get("/v3/projects?name=admin".into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let u: Value = self
            .http
            .post(format!("{}/v3/users", self.identity))
            .header("x-auth-token", admin)
            .json(
                &json!({"user": {"name": user, "password": "pw-of-user", "domain_id": "default"}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let roles: Value = get(format!("/v3/roles?name={role}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r = self
            .http
            .put(format!(
                "{}/v3/projects/{}/users/{}/roles/{}",
                self.identity,
                projects["projects"][0]["id"].as_str().unwrap(),
                u["user"]["id"].as_str().unwrap(),
                roles["roles"][0]["id"].as_str().unwrap()
            ))
            .header("x-auth-token", admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        self.login(user, "pw-of-user", "admin").await
    }

    /// POST to the compute API at microversion `mv`: (status, body).
    async fn post(&self, token: &str, mv: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/v2.1{path}", self.compute))
            .header("x-auth-token", token)
            .header("openstack-api-version", format!("compute {mv}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn remote_console(
        &self,
        token: &str,
        id: &str,
        protocol: &str,
        type_: &str,
    ) -> (StatusCode, Value) {
        self.post(
            token,
            "2.6",
            &format!("/servers/{id}/remote-consoles"),
            json!({"remote_console": {"protocol": protocol, "type": type_}}),
        )
        .await
    }
}

/// The Nova error body's message, checking its shape.
fn nova_error(body: &Value, name: &str, code: u16) -> String {
    let e = &body[name];
    assert_eq!(e["code"], code, "{body}");
    e["message"].as_str().expect("a message").to_owned()
}

/// The token in a console URL.
fn token_in(url: &str) -> String {
    let (_, t) = url
        .rsplit_once("token%3D")
        .or_else(|| url.rsplit_once("token="))
        .unwrap();
    t.to_owned()
}

/// Opens a WebSocket offering the `binary` subprotocol (with `cookie`, if
/// given); an HTTP refusal comes back as its status and body.
async fn ws(
    url: &str,
    cookie: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    (u16, String),
> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "binary".parse().unwrap());
    if let Some(c) = cookie {
        req.headers_mut().insert("cookie", c.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((s, resp)) => {
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap()),
                Some("binary")
            );
            Ok(s)
        }
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("connecting {url}: {e}"),
    }
}

/// Reads frames until their bytes hold `want`.
async fn read_until<S>(s: &mut S, want: &[u8]) -> Vec<u8>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.windows(want.len()).any(|w| w == want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "no {:?} (got {:?}): {other:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

/// A raw HTTP/1.1 GET (no client-side path normalization): the status.
async fn raw_get(addr: &str, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = Vec::new();
    s.read_to_end(&mut text).await.unwrap();
    let text = String::from_utf8_lossy(&text);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn start(backend: Backend, ttl: i64, novnc: &Path) -> (Fleet, u16) {
    let port = mica_tests::free_port();
    let novnc = novnc.display().to_string();
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 1, 8, 8192, 100).with_consoles()],
        move |c| {
            c.api.console_proxy_listen = format!("127.0.0.1:{port}");
            c.console.token_ttl_secs = ttl;
            c.console.novnc_dir = novnc;
        },
    )
    .await;
    (f, port)
}

async fn remote_consoles_and_the_proxy(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let novnc = fake_novnc(dir.path());
    let (f, port) = start(backend, 600, &novnc).await;
    let agent = f.agents[0].backend.clone();
    agent.set_console_socket(ConsoleKind::Serial, fake_serial(dir.path()));
    let api = Api::of(&f);
    let admin = api.login("admin", ADMIN_PASSWORD, "admin").await;
    let uuids = f.create_each(2, 1, 512, 1).await;
    f.settle(&uuids, T).await;
    let (id, id2) = (&uuids[0], &uuids[1]);
    let proxy = format!("127.0.0.1:{port}");

    // Tokens, both protocols, both API forms.
    let (s, vnc) = api.remote_console(&admin, id, "vnc", "novnc").await;
    assert_eq!(s, StatusCode::OK, "{vnc}");
    let rc = &vnc["remote_console"];
    assert_eq!(
        (rc["protocol"].as_str(), rc["type"].as_str()),
        (Some("vnc"), Some("novnc"))
    );
    let vnc_url = rc["url"].as_str().unwrap();
    assert!(
        vnc_url.starts_with(&format!("http://{proxy}/vnc_lite.html?path=%3Ftoken%3D")),
        "{vnc_url}"
    );
    assert_eq!(rc.as_object().unwrap().len(), 3);
    let (s, serial) = api.remote_console(&admin, id, "serial", "serial").await;
    assert_eq!(s, StatusCode::OK, "{serial}");
    let serial_url = serial["remote_console"]["url"].as_str().unwrap().to_owned();
    assert!(
        serial_url.starts_with(&format!("ws://{proxy}/?token=")),
        "{serial_url}"
    );
    assert_ne!(token_in(vnc_url), token_in(&serial_url));
    // Tokens are kept hashed: the URL's token is not in the table.
    let t = token_in(&serial_url);
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM console_auth_tokens")
        .fetch_all(f.cloud.app.db.pool())
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(!stored.contains(&t));
    let action = format!("/servers/{id}/action");
    let (s, old) = api
        .post(
            &admin,
            "2.1",
            &action,
            json!({"os-getVNCConsole": {"type": "novnc"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{old}");
    assert_eq!(old["console"]["type"], "novnc");
    assert!(
        old["console"]["url"]
            .as_str()
            .unwrap()
            .contains("vnc_lite.html?path=%3Ftoken%3D")
    );
    let (s, old) = api
        .post(
            &admin,
            "2.5",
            &action,
            json!({"os-getSerialConsole": {"type": "serial"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{old}");
    assert_eq!(old["console"]["type"], "serial");
    assert!(old["console"]["url"].as_str().unwrap().starts_with("ws://"));

    // Nova's errors.
    let (s, b) = api.remote_console(&admin, id, "telnet", "novnc").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(nova_error(&b, "badRequest", 400).contains("'telnet' is not one of"));
    let (s, b) = api.remote_console(&admin, id, "vnc", "serial").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        nova_error(&b, "badRequest", 400),
        "Unavailable console type serial."
    );
    let (s, b) = api.remote_console(&admin, id, "spice", "spice-html5").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = api
        .post(
            &admin,
            "2.6",
            &format!("/servers/{id}/remote-consoles"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(nova_error(&b, "badRequest", 400).contains("remote_console"));
    let (s, b) = api
        .post(
            &admin,
            "2.1",
            &action,
            json!({"os-getVNCConsole": {"type": "bogus"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = api
        .post(&admin, "2.1", &action, json!({"os-getVNCConsole": {}}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // remote-consoles is 2.6+; the actions end at 2.5.
    let (s, _) = api
        .post(
            &admin,
            "2.5",
            &format!("/servers/{id}/remote-consoles"),
            json!({"remote_console": {"protocol": "vnc", "type": "novnc"}}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .post(
            &admin,
            "2.6",
            &action,
            json!({"os-getVNCConsole": {"type": "novnc"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let missing = uuid::Uuid::new_v4().to_string();
    let (s, b) = api.remote_console(&admin, &missing, "vnc", "novnc").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        nova_error(&b, "itemNotFound", 404),
        format!("Instance {missing} could not be found.")
    );
    let eve = api.other_member(&admin).await;
    let (s, b) = api.remote_console(&eve, id, "serial", "serial").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another project's server: {b}");

    // The proxy: a serial console, end to end through the agent's channel.
    assert_eq!(agent.console_requests(), 0);
    let mut s = ws(&serial_url, None).await.expect("the serial console");
    s.send(Message::binary(b"echo hi\r".to_vec()))
        .await
        .unwrap();
    read_until(&mut s, b"ECHO HI\r").await;
    s.send(Message::text("text frames too\r")).await.unwrap();
    read_until(&mut s, b"TEXT FRAMES TOO\r").await;
    s.close(None).await.unwrap();
    assert_eq!(agent.console_requests(), 1);
    // The same token again (noVNC reconnects), and by Nova's cookie at /websockify.
    let mut s = ws(
        &format!("ws://{proxy}/websockify"),
        Some(&format!("token={t}")),
    )
    .await
    .expect("the serial console by cookie");
    s.send(Message::binary(b"again\r".to_vec())).await.unwrap();
    read_until(&mut s, b"AGAIN\r").await;
    drop(s);
    assert_eq!(agent.console_requests(), 2);

    // Refused before the upgrade, with no RPC to the agent.
    let forged = "0".repeat(64);
    let (status, body) = ws(&format!("ws://{proxy}/?token={forged}"), None)
        .await
        .expect_err("a forged token is refused");
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        nova_error(&body, "unauthorized", 401),
        "The console token is invalid or has expired."
    );
    let mut req = serial_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("a page of another origin: {other:?}"),
    }
    let (status, _) = ws(&format!("ws://{proxy}/websockify"), None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401, "no token");
    let (status, _) = ws(&format!("ws://{proxy}/?token=x%00y"), None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(
        agent.console_requests(),
        2,
        "no console_connect for refused tokens"
    );
    // Not a WebSocket: 400.
    let r = api
        .http
        .get(format!("http://{proxy}/websockify?token={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b: Value = r.json().await.unwrap();
    assert!(nova_error(&b, "badRequest", 400).contains("WebSocket"));

    // A valid VNC token, but no VNC socket on the host (a VMM without a
    // display): the host says so, before the upgrade.
    let (status, body) = ws(&format!("ws://{proxy}/?token={}", token_in(vnc_url)), None)
        .await
        .expect_err("no VNC console");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no VNC console"), "{body}");
    assert_eq!(agent.console_requests(), 3);

    // The noVNC files; nothing outside their folder.
    let get = |path: &str| {
        let req = api.http.get(format!("http://{proxy}{path}"));
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            let kind = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, kind, r.text().await.unwrap())
        }
    };
    let (status, kind, page) = get("/vnc.html").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(page.contains("./core/rfb.js"), "Mica's page, running noVNC");
    let (status, _, _) = get("/vnc_lite.html?path=%3Ftoken%3Dx").await;
    assert_eq!(status, StatusCode::OK);
    let (status, kind, _) = get("/core/rfb.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/javascript"), "{kind}");
    let (status, _, body) = get("/nothing.html").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    nova_error(&serde_json::from_str(&body).unwrap(), "itemNotFound", 404);
    for bad in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/core/../../secret.txt",
        "/core/%2E%2E/%2e%2e/secret.txt",
        "/link.txt",
    ] {
        assert_eq!(raw_get(&proxy, bad).await, 400, "{bad}");
    }
    assert_eq!(raw_get(&proxy, "/core").await, 404);
    let r = api
        .http
        .get(format!("http://{proxy}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.url().path(),
        "/vnc.html",
        "the bare address leads to noVNC"
    );

    // The real CLI.
    let cli = |args: &[&str]| -> String {
        let out = Command::new(mica_tests::venv_bin("openstack"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("OS_AUTH_URL", format!("{}/v3", api.identity))
            .env("OS_USERNAME", "admin")
            .env("OS_PASSWORD", ADMIN_PASSWORD)
            .env("OS_PROJECT_NAME", "admin")
            .env("OS_USER_DOMAIN_NAME", "Default")
            .env("OS_PROJECT_DOMAIN_NAME", "Default")
            .env("OS_IDENTITY_API_VERSION", "3")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openstack {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let v: Value = serde_json::from_str(&cli(&[
        "console", "url", "show", "--novnc", id, "-f", "json",
    ]))
    .unwrap();
    assert_eq!(v["type"], "novnc", "{v}");
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .contains("/vnc_lite.html?path=%3Ftoken%3D"),
        "{v}"
    );
    let v: Value = serde_json::from_str(&cli(&[
        "console", "url", "show", "--serial", id, "-f", "json",
    ]))
    .unwrap();
    assert_eq!(v["type"], "serial", "{v}");
    let cli_url = v["url"].as_str().unwrap().to_owned();
    let log = cli(&["console", "log", "show", id]);
    assert!(log.contains("Mica simulated guest"), "{log}");
    // The CLI's URL works.
    let mut s = ws(&cli_url, None).await.expect("the CLI's serial URL");
    s.send(Message::binary(b"cli\r".to_vec())).await.unwrap();
    read_until(&mut s, b"CLI\r").await;
    drop(s);

    // A stopped server: 409, and no token.
    f.action(id2, InstanceAction::Stop).await;
    f.idle(id2, T).await;
    let (s, b) = api.remote_console(&admin, id2, "serial", "serial").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(nova_error(&b, "conflictingRequest", 409).contains("vm_state stopped"));
    // A deleted server's tokens die with it.
    let (_, b) = api.remote_console(&admin, id, "serial", "serial").await;
    let doomed = b["remote_console"]["url"].as_str().unwrap().to_owned();
    let r = api
        .http
        .delete(format!("{}/v2.1/servers/{id}", api.compute))
        .header("x-auth-token", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + T;
    while mica_controller::db::instances::get_instance(f.cloud.app.db.pool(), id)
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "{id} not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = agent.console_requests();
    let (status, _) = ws(&doomed, None)
        .await
        .expect_err("a deleted server's token");
    assert_eq!(status, 401);
    assert_eq!(agent.console_requests(), before);
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM console_auth_tokens WHERE instance_uuid = $1")
            .bind(id.as_str())
            .fetch_one(f.cloud.app.db.pool())
            .await
            .unwrap();
    assert_eq!(left, 0);
    f.stop().await;
}

async fn expired_tokens_are_refused(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let novnc = fake_novnc(dir.path());
    let (f, port) = start(backend, 1, &novnc).await;
    let agent = f.agents[0].backend.clone();
    agent.set_console_socket(ConsoleKind::Serial, fake_serial(dir.path()));
    let api = Api::of(&f);
    let admin = api.login("admin", ADMIN_PASSWORD, "admin").await;
    let uuids = f.create_each(1, 1, 512, 1).await;
    f.settle(&uuids, T).await;
    let (s, b) = api
        .remote_console(&admin, &uuids[0], "serial", "serial")
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let url = b["remote_console"]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("ws://127.0.0.1:{port}/?token=")));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = ws(&url, None).await.expect_err("an expired token");
    assert_eq!(status, 401, "{body}");
    assert_eq!(agent.console_requests(), 0, "no RPC for an expired token");
    // The sweep removes it.
    assert_eq!(
        mica_controller::app::compute::consoles::sweep_expired(&f.cloud.app)
            .await
            .unwrap(),
        1
    );
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM console_auth_tokens")
        .fetch_one(f.cloud.app.db.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
    f.stop().await;
}

/// With consoles off, the API says 501.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_consoles_are_501() {
    let env = common::Env::start_with(Backend::Sqlite, |c| c.console.enabled = false).await;
    let admin = env.admin().await;
    let id = uuid::Uuid::new_v4();
    let r = env
        .http
        .post(format!("{}/v2.1/servers/{id}/remote-consoles", env.compute))
        .header("x-auth-token", &admin.token)
        .header("openstack-api-version", "compute 2.6")
        .json(&json!({"remote_console": {"protocol": "serial", "type": "serial"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
    let b: Value = r.json().await.unwrap();
    assert!(nova_error(&b, "notImplemented", 501).contains("not implemented"));
    env.stop().await;
}

/// A Unix socket speaking just enough RFB 3.8 (security None, one raw
/// 320×200 orange frame) to stand in for a VMM's VNC socket until
/// mica-vmm serves its framebuffer.
fn fake_vnc(dir: &Path) -> PathBuf {
    use std::io::{Read, Write};
    let path = dir.join("fake.vnc");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || -> std::io::Result<()> {
                let (w, h) = (320u16, 200u16);
                let mut buf = [0u8; 64];
                s.write_all(b"RFB 003.008\n")?;
                s.read_exact(&mut buf[..12])?;
                s.write_all(&[1, 1])?; // one security type: None
                s.read_exact(&mut buf[..1])?;
                s.write_all(&0u32.to_be_bytes())?;
                s.read_exact(&mut buf[..1])?; // ClientInit
                let mut init = Vec::new();
                init.extend(w.to_be_bytes());
                init.extend(h.to_be_bytes());
                // 32 bpp, depth 24, little endian, true colour, 8 bits each.
                init.extend([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
                let name = b"mica-fake";
                init.extend((name.len() as u32).to_be_bytes());
                init.extend(name);
                s.write_all(&init)?;
                let (mut rs, mut gs, mut bs) = (16u8, 8u8, 0u8);
                let mut sent = false;
                loop {
                    s.read_exact(&mut buf[..1])?;
                    match buf[0] {
                        0 => {
                            // SetPixelFormat: 3 padding bytes, then the
                            // format, whose shifts are its bytes 10 to 12.
                            s.read_exact(&mut buf[..19])?;
                            (rs, gs, bs) = (buf[13], buf[14], buf[15]);
                        }
                        2 => {
                            s.read_exact(&mut buf[..3])?;
                            let n = u16::from_be_bytes([buf[1], buf[2]]) as usize;
                            let mut skip = vec![0u8; 4 * n];
                            s.read_exact(&mut skip)?;
                        }
                        3 => {
                            s.read_exact(&mut buf[..9])?;
                            if sent && buf[0] == 1 {
                                continue;
                            }
                            sent = true;
                            let mut m = vec![0u8, 0];
                            m.extend(1u16.to_be_bytes());
                            m.extend([0, 0, 0, 0]);
                            m.extend(w.to_be_bytes());
                            m.extend(h.to_be_bytes());
                            m.extend(0i32.to_be_bytes());
                            let px = (255u32 << rs) | (128u32 << gs) | (0u32 << bs);
                            for _ in 0..(w as usize * h as usize) {
                                m.extend(px.to_le_bytes());
                            }
                            s.write_all(&m)?;
                        }
                        4 => s.read_exact(&mut buf[..7])?,
                        5 => s.read_exact(&mut buf[..5])?,
                        6 => {
                            s.read_exact(&mut buf[..7])?;
                            let n = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
                            std::io::copy(&mut (&mut s).take(n as u64), &mut std::io::sink())?;
                        }
                        _ => return Ok(()),
                    }
                }
            });
        }
    });
    path
}

/// Mica's console page with the real noVNC library, in headless chromium,
/// through the proxy and a simulated agent's console channel to a fake VNC
/// socket: the page connects and draws the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_novnc_page_connects_in_chromium() {
    let Some(novnc) = mica_tests::browser::required() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = start(Backend::Sqlite, 600, &novnc).await;
    f.agents[0]
        .backend
        .set_console_socket(ConsoleKind::Vnc, fake_vnc(dir.path()));
    let api = Api::of(&f);
    let admin = api.login("admin", ADMIN_PASSWORD, "admin").await;
    let uuids = f.create_each(1, 1, 512, 1).await;
    f.settle(&uuids, T).await;
    let (s, b) = api.remote_console(&admin, &uuids[0], "vnc", "novnc").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let url = b["remote_console"]["url"].as_str().unwrap().to_owned();
    let shot = dir.path().join("novnc.png");
    let v = {
        let shot = shot.clone();
        tokio::task::spawn_blocking(move || mica_tests::browser::open_console(&url, &shot, 20_000))
            .await
            .unwrap()
    };
    assert_eq!(v["rfb"], true, "{v}");
    assert_eq!(v["state"], "connected", "{v}");
    assert_eq!(v["canvas"]["width"], 320, "{v}");
    assert!(v["canvas"]["nonBlack"].as_u64().unwrap() > 10_000, "{v}");
    let keep = mica_tests::browser::keep_artifact(&shot, "novnc-page-fake-vnc.png");
    eprintln!("screenshot: {}", keep.display());
    f.stop().await;
}

/// Consoles are for the project's members (Nova's defaults): a reader of
/// the server's project gets 403 on every console call and no token is
/// issued; a member gets its consoles.
async fn readers_get_no_console(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let novnc = fake_novnc(dir.path());
    let (f, _port) = start(backend, 600, &novnc).await;
    let api = Api::of(&f);
    let admin = api.login("admin", ADMIN_PASSWORD, "admin").await;
    let reader = api.admin_project_user(&admin, "rita", "reader").await;
    let member = api.admin_project_user(&admin, "max", "member").await;
    let uuids = f.create_each(1, 1, 512, 1).await;
    f.settle(&uuids, T).await;
    let id = &uuids[0];
    let action = format!("/servers/{id}/action");
    // The reader can see the server…
    let r = api
        .http
        .get(format!("{}/v2.1/servers/{id}", api.compute))
        .header("x-auth-token", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // …but opens no console of it.
    for (protocol, type_) in [("vnc", "novnc"), ("serial", "serial")] {
        let (s, body) = api.remote_console(&reader, id, protocol, type_).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{protocol}: {body}");
        nova_error(&body, "forbidden", 403);
    }
    for (mv, body) in [
        ("2.1", json!({"os-getVNCConsole": {"type": "novnc"}})),
        ("2.1", json!({"os-getSerialConsole": {"type": "serial"}})),
        ("2.1", json!({"os-getConsoleOutput": {"length": 10}})),
        ("2.96", json!({"os-getConsoleOutput": {}})),
    ] {
        let (s, e) = api.post(&reader, mv, &action, body.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}: {e}");
        nova_error(&e, "forbidden", 403);
    }
    let issued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM console_auth_tokens")
        .fetch_one(f.cloud.app.db.pool())
        .await
        .unwrap();
    assert_eq!(issued, 0, "no token for the reader");
    // A member of the project gets them.
    let (s, body) = api.remote_console(&member, id, "serial", "serial").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = api
        .post(
            &member,
            "2.1",
            &action,
            json!({"os-getVNCConsole": {"type": "novnc"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = api
        .post(&member, "2.1", &action, json!({"os-getConsoleOutput": {}}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    f.stop().await;
}
