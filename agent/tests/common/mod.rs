//! Shared by the agent's integration tests: isolated buses, a real image API
//! (mica-controller's, on a throw-away SQLite database) with images uploaded
//! through it, and agent options with short intervals.
#![allow(dead_code)]

pub mod nested;

use std::time::Duration;

use mica_agent::AgentOptions;
use mica_controller::app::ServiceKind;
use mica_controller::db::Backend;
use mica_controller::testing::{ADMIN_PASSWORD, TestCloud};
use mica_rpc::compute::ImageSpec;
use mica_rpc::{Rpc, RpcOptions};
use serde_json::{Value, json};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mica_agent=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The RabbitMQ of `make setup`, as this machine reaches it.
pub fn amqp_url() -> String {
    std::env::var("MICA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://mica:mica@127.0.0.1:5672/mica".into())
}

/// One test's bus: a unique namespace (and, in memory, a unique bus).
#[derive(Clone)]
pub struct TestBus {
    pub url: String,
    pub options: RpcOptions,
}

impl TestBus {
    pub fn memory() -> Self {
        init_tracing();
        let ns = unique("agent");
        Self {
            url: format!("memory://{ns}"),
            options: RpcOptions {
                namespace: ns,
                ..RpcOptions::default()
            },
        }
    }

    pub fn amqp() -> Self {
        init_tracing();
        Self {
            url: amqp_url(),
            options: RpcOptions {
                namespace: unique("agent"),
                queue_expiry: Some(Duration::from_secs(600)),
                reconnect_min: Duration::from_millis(50),
                reconnect_max: Duration::from_secs(1),
                connection_name: Some("mica-agent tests".into()),
                ..RpcOptions::default()
            },
        }
    }

    pub async fn connect(&self) -> Rpc {
        Rpc::connect_with(&self.url, self.options.clone())
            .await
            .expect("the test bus (RabbitMQ from `make setup` for amqp://)")
    }
}

/// Agent options for tests: fast heartbeats and power sync.
pub fn fast_options(host: &str) -> AgentOptions {
    AgentOptions {
        report_interval: Duration::from_secs(1),
        resource_update_interval: Duration::from_secs(60),
        sync_power_state_interval: Duration::from_secs(1),
        housekeeping_interval: Duration::from_secs(3600),
        call_timeout: Duration::from_secs(10),
        ..AgentOptions::new(host)
    }
}

/// mica-controller's image API over a fresh SQLite database, and an admin
/// token for it.
pub struct ImageApi {
    pub cloud: TestCloud,
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl ImageApi {
    pub async fn start() -> ImageApi {
        let cloud = TestCloud::start(Backend::Sqlite, |_| {}).await;
        let http = reqwest::Client::new();
        let identity = cloud.base(ServiceKind::Identity);
        let resp = http
            .post(format!("{identity}/v3/auth/tokens"))
            .json(&json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "admin", "domain": {"name": "Default"}, "password": ADMIN_PASSWORD}}},
                "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}
            }}))
            .send()
            .await
            .expect("identity API");
        assert_eq!(resp.status().as_u16(), 201, "admin login");
        let token = resp.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_owned();
        ImageApi {
            base: cloud.base(ServiceKind::Image),
            cloud,
            token,
            http,
        }
    }

    /// The port the image API listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Creates an image, uploads `data`, and returns what the conductor
    /// would put in a build request (the image's checksums as the image API
    /// computed them, a download URL under `url_base`, a token).
    pub async fn upload(
        &self,
        name: &str,
        disk_format: &str,
        data: Vec<u8>,
        url_base: &str,
    ) -> ImageSpec {
        let r = self
            .http
            .post(format!("{}/v2/images", self.base))
            .header("x-auth-token", &self.token)
            .json(&json!({"name": name, "disk_format": disk_format, "container_format": "bare"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "creating image {name}");
        let img: Value = r.json().await.unwrap();
        let id = img["id"].as_str().unwrap().to_owned();
        let r = self
            .http
            .put(format!("{}/v2/images/{id}/file", self.base))
            .header("x-auth-token", &self.token)
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            204,
            "uploading image {name}: {}",
            r.text().await.unwrap_or_default()
        );
        self.spec(&id, url_base).await
    }

    /// The build request's view of image `id`.
    pub async fn spec(&self, id: &str, url_base: &str) -> ImageSpec {
        let r = self
            .http
            .get(format!("{}/v2/images/{id}", self.base))
            .header("x-auth-token", &self.token)
            .send()
            .await
            .unwrap();
        let img: Value = r.json().await.unwrap();
        assert_eq!(img["status"], "active", "{img}");
        ImageSpec {
            id: id.to_owned(),
            name: img["name"].as_str().unwrap_or_default().to_owned(),
            disk_format: img["disk_format"].as_str().unwrap().to_owned(),
            size: img["size"].as_u64().unwrap(),
            checksum: img["checksum"].as_str().map(str::to_owned),
            os_hash_algo: img["os_hash_algo"].as_str().map(str::to_owned),
            os_hash_value: img["os_hash_value"].as_str().map(str::to_owned),
            download_url: format!("{url_base}/v2/images/{id}/file"),
            download_token: self.token.clone(),
            properties: Default::default(),
        }
    }

    /// Deletes an image (its data becomes unavailable).
    pub async fn delete(&self, id: &str) {
        let r = self
            .http
            .delete(format!("{}/v2/images/{id}", self.base))
            .header("x-auth-token", &self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
    }
}

/// `n` bytes that do not compress (and are not all zero, so sparse copies
/// have data to copy).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::new();
    (0..n).map(|_| rng.u8(..)).collect()
}
