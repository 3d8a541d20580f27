//! Helpers shared by the integration tests: a fresh, isolated bus per test.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mica_rpc::{Rpc, RpcOptions};

/// The RabbitMQ that `make setup` runs (override with `MICA_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("MICA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://mica:mica@127.0.0.1:5672/mica".into())
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mica_rpc=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// One test's bus: a unique namespace (and, in memory, a unique bus), so
/// tests running in parallel never see each other's messages.
#[derive(Clone)]
pub struct TestBus {
    pub url: String,
    pub options: RpcOptions,
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

impl TestBus {
    pub fn memory() -> Self {
        init_tracing();
        let ns = unique("t");
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
                namespace: unique("t"),
                // Test queues vanish by themselves ten minutes after use.
                queue_expiry: Some(Duration::from_secs(600)),
                reconnect_min: Duration::from_millis(50),
                reconnect_max: Duration::from_secs(1),
                connection_name: Some("mica-rpc tests".into()),
                ..RpcOptions::default()
            },
        }
    }

    pub fn is_amqp(&self) -> bool {
        self.url.starts_with("amqp://")
    }

    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.options.prefetch = prefetch;
        self
    }

    /// A new client: a new connection, as another process would have.
    pub async fn rpc(&self) -> Rpc {
        Rpc::connect_with(&self.url, self.options.clone())
            .await
            .expect("connect")
    }
}

/// Things handlers saw, by key, in order.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<HashMap<String, Vec<serde_json::Value>>>>);

impl Seen {
    pub fn push(&self, key: &str, value: serde_json::Value) {
        self.0
            .lock()
            .unwrap()
            .entry(key.into())
            .or_default()
            .push(value);
    }

    pub fn get(&self, key: &str) -> Vec<serde_json::Value> {
        self.0.lock().unwrap().get(key).cloned().unwrap_or_default()
    }

    pub fn count(&self, key: &str) -> usize {
        self.get(key).len()
    }

    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().map(Vec::len).sum()
    }
}

/// Waits until `cond` holds, up to `within`; returns whether it did.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`] with an async probe.
pub async fn eventually_async<F, Fut>(within: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
