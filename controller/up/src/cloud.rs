//! First-start setup through the cloud's own APIs (as an operator would with
//! the `openstack` CLI), the clouds.yaml for users, and stopping every server
//! at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::up::write_private;

/// The flavors of the first start: Nova's m1.tiny and m1.small, and m1.nano
/// for microVMs (name, id, vCPUs, MiB, GB).
const FLAVORS: [(&str, &str, u32, u32, u32); 3] = [
    ("m1.nano", "42", 1, 128, 1),
    ("m1.tiny", "1", 1, 512, 1),
    ("m1.small", "2", 1, 2048, 20),
];

/// The name of the guest image of the first start.
pub const IMAGE_NAME: &str = "tiny";

/// A logged-in client of the cloud's APIs.
pub struct Cloud {
    http: reqwest::Client,
    token: String,
    /// Public URLs from the token's catalog, by service type.
    catalog: Vec<(String, String)>,
    /// The project the token is scoped to.
    pub project_id: String,
}

impl Cloud {
    /// Logs `user` in to `project` (both in the default domain).
    pub async fn login(identity: &str, user: &str, password: &str, project: &str) -> Result<Cloud> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}
        }});
        let resp = http
            .post(format!("{identity}/auth/tokens"))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("logging in to {identity}"))?;
        if !resp.status().is_success() {
            bail!(
                "logging in as {user}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .context("no X-Subject-Token in the answer")?
            .to_owned();
        let v: Value = resp.json().await?;
        let mut catalog = Vec::new();
        for svc in v["token"]["catalog"].as_array().into_iter().flatten() {
            for ep in svc["endpoints"].as_array().into_iter().flatten() {
                if ep["interface"] == "public" {
                    catalog.push((
                        svc["type"].as_str().unwrap_or_default().to_owned(),
                        ep["url"]
                            .as_str()
                            .unwrap_or_default()
                            .trim_end_matches('/')
                            .to_owned(),
                    ));
                }
            }
        }
        let project_id = v["token"]["project"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(Cloud {
            http,
            token,
            catalog,
            project_id,
        })
    }

    /// The public URL of a service type (`compute`, `image`, …).
    pub fn url(&self, kind: &str) -> Result<&str> {
        self.catalog
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, u)| u.as_str())
            .with_context(|| format!("the catalog has no {kind} service"))
    }

    /// One JSON request; answers the status and body (`Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{path}", self.url(service)?);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("X-Auth-Token", &self.token)
            .header("OpenStack-API-Version", "compute 2.96");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    /// A request that must succeed.
    pub async fn ok(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let (status, v) = self.call(method.clone(), service, path, body).await?;
        if !status.is_success() {
            bail!("{method} {service} {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Stops every server that runs (all projects) and waits until none is
    /// running or has a task. Returns how many it stopped.
    pub async fn stop_all_servers(&self, timeout: Duration) -> Result<usize> {
        let list = self
            .ok(
                Method::GET,
                "compute",
                "/servers/detail?all_tenants=True",
                None,
            )
            .await?;
        let mut stopped = 0;
        for s in list["servers"].as_array().into_iter().flatten() {
            if matches!(
                s["status"].as_str(),
                Some("ACTIVE" | "PAUSED" | "SUSPENDED")
            ) {
                let id = s["id"].as_str().unwrap_or_default();
                let (status, v) = self
                    .call(
                        Method::POST,
                        "compute",
                        &format!("/servers/{id}/action"),
                        Some(json!({"os-stop": null})),
                    )
                    .await?;
                if status.is_success() {
                    stopped += 1;
                } else {
                    tracing::warn!(server = id, "cannot stop: {status} {v}");
                }
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let list = self
                .ok(
                    Method::GET,
                    "compute",
                    "/servers/detail?all_tenants=True",
                    None,
                )
                .await?;
            let busy: Vec<String> = list["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| {
                    !s["OS-EXT-STS:task_state"].is_null()
                        || matches!(
                            s["status"].as_str(),
                            Some("ACTIVE" | "PAUSED" | "SUSPENDED")
                        )
                })
                .map(|s| format!("{} {}", s["name"], s["status"]))
                .collect();
            if busy.is_empty() {
                return Ok(stopped);
            }
            if Instant::now() > deadline {
                bail!(
                    "servers still running after {timeout:?}: {}",
                    busy.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Finds the one object named `name` in a list answer.
fn find_named<'a>(list: &'a Value, key: &str, name: &str) -> Option<&'a Value> {
    list[key]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["name"] == name)
}

/// The first-start objects, created when missing (so a later start keeps
/// what is there): the demo project and its member user, the flavors, the
/// tiny image, the default security groups, and (for a compute host that
/// reaches the image API at another address) the image API's internal
/// endpoint.
pub async fn first_start(
    admin: &Cloud,
    demo_password: &str,
    image_internal: Option<&str>,
) -> Result<()> {
    // The demo project and user (member).
    let projects = admin
        .ok(Method::GET, "identity", "/projects?name=demo", None)
        .await?;
    let demo_project = match find_named(&projects, "projects", "demo") {
        Some(p) => p["id"].as_str().unwrap_or_default().to_owned(),
        None => {
            let p = admin
                .ok(
                    Method::POST,
                    "identity",
                    "/projects",
                    Some(json!({"project": {"name": "demo", "domain_id": "default",
                        "description": "The demo project of mica up"}})),
                )
                .await?;
            tracing::info!("created the project demo");
            p["project"]["id"].as_str().unwrap_or_default().to_owned()
        }
    };
    let users = admin
        .ok(Method::GET, "identity", "/users?name=demo", None)
        .await?;
    let demo_user = match find_named(&users, "users", "demo") {
        Some(u) => {
            let id = u["id"].as_str().unwrap_or_default().to_owned();
            admin
                .ok(
                    Method::PATCH,
                    "identity",
                    &format!("/users/{id}"),
                    Some(json!({"user": {"password": demo_password}})),
                )
                .await?;
            id
        }
        None => {
            let u = admin
                .ok(
                    Method::POST,
                    "identity",
                    "/users",
                    Some(json!({"user": {"name": "demo", "domain_id": "default",
                        "password": demo_password,
                        "default_project_id": demo_project}})),
                )
                .await?;
            tracing::info!("created the user demo");
            u["user"]["id"].as_str().unwrap_or_default().to_owned()
        }
    };
    let roles = admin
        .ok(Method::GET, "identity", "/roles?name=member", None)
        .await?;
    let member = find_named(&roles, "roles", "member")
        .and_then(|r| r["id"].as_str())
        .context("the identity service has no member role")?
        .to_owned();
    admin
        .ok(
            Method::PUT,
            "identity",
            &format!("/projects/{demo_project}/users/{demo_user}/roles/{member}"),
            None,
        )
        .await?;

    // Flavors.
    let flavors = admin
        .ok(
            Method::GET,
            "compute",
            "/flavors/detail?is_public=None",
            None,
        )
        .await?;
    for (name, id, vcpus, ram, disk) in FLAVORS {
        if find_named(&flavors, "flavors", name).is_none() {
            admin
                .ok(
                    Method::POST,
                    "compute",
                    "/flavors",
                    Some(json!({"flavor": {"name": name, "id": id, "vcpus": vcpus,
                        "ram": ram, "disk": disk}})),
                )
                .await?;
            tracing::info!(flavor = name, "created a flavor");
        }
    }

    // The tiny image (compressed qcow2: small to carry to any compute host).
    let images = admin
        .ok(
            Method::GET,
            "image",
            &format!("/v2/images?name={IMAGE_NAME}"),
            None,
        )
        .await?;
    let existing = images["images"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == IMAGE_NAME)
        .cloned();
    let usable = existing.as_ref().is_some_and(|i| i["status"] == "active");
    if !usable {
        if let Some(i) = existing {
            // An upload that did not finish: start over.
            let id = i["id"].as_str().unwrap_or_default();
            admin
                .ok(Method::DELETE, "image", &format!("/v2/images/{id}"), None)
                .await?;
        }
        upload_tiny_image(admin).await?;
    }

    // The default security groups (made on first look, as Neutron does).
    admin
        .ok(
            Method::GET,
            "network",
            "/v2.0/security-groups?name=default",
            None,
        )
        .await?;
    let identity = admin.url("identity")?.to_owned();
    let demo = Cloud::login(&identity, "demo", demo_password, "demo").await?;
    demo.ok(
        Method::GET,
        "network",
        "/v2.0/security-groups?name=default",
        None,
    )
    .await?;

    // Where compute hosts download images from.
    if let Some(url) = image_internal {
        set_internal_endpoint(admin, "image", url).await?;
    }
    Ok(())
}

async fn upload_tiny_image(admin: &Cloud) -> Result<()> {
    let images = mica_tests::artifacts::GuestImages::locate()
        .context("Mica's guest images (run `make setup`)")?;
    let raw = images.tiny_ext4();
    let dir = std::env::temp_dir().join(format!("mica-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let qcow2 = dir.join("tiny.qcow2");
    let status = tokio::process::Command::new("qemu-img")
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .await
        .context("running qemu-img (Debian package qemu-utils; `apt-get install qemu-utils`)")?;
    if !status.success() {
        bail!("qemu-img convert {} failed: {status}", raw.display());
    }
    let data = std::fs::read(&qcow2)?;
    let _ = std::fs::remove_dir_all(&dir);
    let img = admin
        .ok(
            Method::POST,
            "image",
            "/v2/images",
            Some(json!({"name": IMAGE_NAME, "disk_format": "qcow2",
                "container_format": "bare", "visibility": "public",
                "os_distro": "mica-tiny", "min_disk": 1})),
        )
        .await?;
    let id = img["id"].as_str().context("no image id")?.to_owned();
    let url = format!("{}/v2/images/{id}/file", admin.url("image")?);
    let resp = admin
        .http
        .put(&url)
        .header("X-Auth-Token", &admin.token)
        .header("Content-Type", "application/octet-stream")
        .body(data)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!(
            "uploading the tiny image: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    tracing::info!(image = %id, from = %raw.display(), "uploaded the image tiny");
    Ok(())
}

/// Makes `url` the internal endpoint of the service of type `kind`.
async fn set_internal_endpoint(admin: &Cloud, kind: &str, url: &str) -> Result<()> {
    let services = admin
        .ok(
            Method::GET,
            "identity",
            &format!("/services?type={kind}"),
            None,
        )
        .await?;
    let service = services["services"]
        .as_array()
        .and_then(|s| s.first())
        .and_then(|s| s["id"].as_str())
        .with_context(|| format!("no {kind} service in the catalog"))?
        .to_owned();
    let eps = admin
        .ok(
            Method::GET,
            "identity",
            &format!("/endpoints?service_id={service}&interface=internal"),
            None,
        )
        .await?;
    let mut region = Value::Null;
    for ep in eps["endpoints"].as_array().into_iter().flatten() {
        if ep["url"] == url {
            return Ok(());
        }
        region = ep["region_id"].clone();
        let id = ep["id"].as_str().unwrap_or_default();
        admin
            .ok(
                Method::DELETE,
                "identity",
                &format!("/endpoints/{id}"),
                None,
            )
            .await?;
    }
    admin
        .ok(
            Method::POST,
            "identity",
            "/endpoints",
            Some(
                json!({"endpoint": {"service_id": service, "interface": "internal",
                "url": url, "region_id": region}}),
            ),
        )
        .await?;
    Ok(())
}

const CLOUDS_MARK: &str = "# Written by `mica up`";

/// Writes the clouds `mica` and `mica-demo`: into `wanted` (default
/// ~/.config/openstack/clouds.yaml) unless that file exists and Mica did not
/// write it, in which case into `<state>/clouds.yaml`. Returns the path.
pub fn write_clouds_yaml(
    wanted: Option<&Path>,
    state: &Path,
    identity: &str,
    admin_password: &str,
    demo_password: &str,
) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let wanted = wanted.map_or_else(
        || home.join(".config/openstack/clouds.yaml"),
        Path::to_path_buf,
    );
    let ours = |p: &Path| std::fs::read_to_string(p).map_or(true, |t| t.starts_with(CLOUDS_MARK));
    let path = if ours(&wanted) {
        wanted
    } else {
        let p = state.join("clouds.yaml");
        tracing::warn!(
            "{} exists and was not written by mica up: the clouds go to {}",
            wanted.display(),
            p.display()
        );
        p
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let cloud = |user: &str, password: &str, project: &str| {
        format!(
            "  {name}:\n    auth:\n      auth_url: {identity}\n      username: {user}\n      \
             password: {password}\n      project_name: {project}\n      \
             user_domain_id: default\n      project_domain_id: default\n    \
             region_name: RegionOne\n    identity_api_version: 3\n    interface: public\n",
            name = if user == "admin" { "mica" } else { "mica-demo" },
        )
    };
    let text = format!(
        "{CLOUDS_MARK} (state {}): it rewrites this file at each start.\nclouds:\n{}{}",
        state.display(),
        cloud("admin", admin_password, "admin"),
        cloud("demo", demo_password, "demo"),
    );
    write_private(&path, &text)?;
    Ok(path)
}
