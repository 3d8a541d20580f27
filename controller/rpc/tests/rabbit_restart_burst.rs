//! Restarts the real RabbitMQ during a burst of casts and calls.
//!
//! Expected: every cast returns Ok (it waits through the outage) and is
//! delivered after the broker is back, at least once; calls in flight when
//! the connection drops fail with `ConnectionLost`, calls that cannot be sent
//! in time with `Unavailable`, calls whose reply does not come in time with
//! `Timeout`, and nothing else; both the publisher's and the server's clients
//! reconnect by themselves; calls after the restart succeed.
//!
//! This binary's name starts with `rabbit_restart_`: `.config/nextest.toml`
//! runs such tests one at a time and alone. It leaves RabbitMQ running.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Seen, TestBus, eventually};
use mica_rpc::{Dispatcher, RemoteError, RpcError, Topic, Version};
use serde_json::json;

fn as_root(cmd: &str) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if root {
        Command::new(cmd)
    } else {
        let mut c = Command::new("sudo");
        c.arg(cmd);
        c
    }
}

fn rabbit_up() -> bool {
    as_root("rabbitmqctl")
        .args(["-q", "--timeout", "10", "status"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn await_startup() {
    let ok = as_root("rabbitmqctl")
        .args(["-q", "--timeout", "120", "await_startup"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "RabbitMQ did not come back");
}

/// A real restart of the broker (the node, not just the app).
fn restart_rabbitmq() {
    let init = "/etc/init.d/rabbitmq-server";
    let ok = if std::path::Path::new(init).exists() {
        as_root(init).arg("restart").status().map(|s| s.success())
    } else {
        as_root("rabbitmqctl")
            .arg("stop_app")
            .status()
            .and_then(|_| as_root("rabbitmqctl").arg("start_app").status())
            .map(|s| s.success())
    }
    .unwrap_or(false);
    assert!(ok, "restarting RabbitMQ failed");
    await_startup();
}

/// Leaves RabbitMQ running however the test ends.
struct EnsureRabbitRunning;

impl Drop for EnsureRabbitRunning {
    fn drop(&mut self) {
        if !rabbit_up() {
            let init = "/etc/init.d/rabbitmq-server";
            let _ = as_root(init).arg("start").status();
            await_startup();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_during_a_burst_loses_no_cast() {
    let _guard = EnsureRabbitRunning;
    assert!(rabbit_up(), "RabbitMQ must be running (make setup)");
    let mut bus = TestBus::amqp();
    bus.options.publish_timeout = Duration::from_secs(120);
    const TOTAL: u64 = 400;

    let seen = Seen::default();
    let s = seen.clone();
    let dispatcher = Dispatcher::new(Version::new(1, 0))
        .handle("record", move |_ctx, n: u64| {
            let s = s.clone();
            async move {
                s.push("record", json!(n));
                Ok::<_, RemoteError>(())
            }
        })
        .handle(
            "echo",
            |_ctx, n: u64| async move { Ok::<_, RemoteError>(n) },
        );
    let server_rpc = bus.rpc().await;
    let _server = server_rpc
        .serve([Topic::conductor().into()], dispatcher)
        .await
        .unwrap();
    let publisher = bus.rpc().await;

    // The burst of casts.
    let sent = Arc::new(AtomicUsize::new(0));
    let casting = {
        let (publisher, sent) = (publisher.clone(), sent.clone());
        tokio::spawn(async move {
            for n in 0..TOTAL {
                publisher
                    .cast(Topic::conductor(), "record", &n)
                    .await
                    .unwrap_or_else(|e| panic!("cast {n} failed: {e}"));
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Calls alongside.
    let stop_calls = Arc::new(AtomicBool::new(false));
    let calling = {
        let (publisher, stop) = (publisher.clone(), stop_calls.clone());
        tokio::spawn(async move {
            let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) {
                k += 1;
                let r: Result<u64, RpcError> = publisher
                    .call(Topic::conductor(), "echo", &k, Duration::from_secs(3))
                    .await;
                let kind = match r {
                    Ok(v) => {
                        assert_eq!(v, k, "a reply to another call");
                        "ok"
                    }
                    Err(RpcError::ConnectionLost { .. }) => "connection_lost",
                    Err(RpcError::Timeout { .. }) => "timeout",
                    Err(RpcError::Unavailable(_)) => "unavailable",
                    Err(other) => panic!("unexpected call error: {other:?}"),
                };
                *outcomes.entry(kind).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        })
    };

    // Restart in the middle of the burst.
    assert!(
        eventually(Duration::from_secs(60), || sent.load(Ordering::SeqCst)
            >= 100)
        .await
    );
    let restart_started = Instant::now();
    tokio::task::spawn_blocking(restart_rabbitmq).await.unwrap();
    let restart_took = restart_started.elapsed();
    let sent_at_restart_end = sent.load(Ordering::SeqCst);

    tokio::time::timeout(Duration::from_secs(180), casting)
        .await
        .expect("every cast returns")
        .unwrap();
    let all_delivered = eventually(Duration::from_secs(60), || {
        let mut got: Vec<u64> = seen
            .get("record")
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        got.sort();
        got.dedup();
        got.len() as u64 == TOTAL
    })
    .await;
    stop_calls.store(true, Ordering::SeqCst);
    let outcomes = calling.await.unwrap();

    let records = seen.get("record");
    let mut distinct: Vec<u64> = records.iter().map(|v| v.as_u64().unwrap()).collect();
    distinct.sort();
    distinct.dedup();
    let missing: Vec<u64> = (0..TOTAL)
        .filter(|n| distinct.binary_search(n).is_err())
        .collect();
    println!(
        "restart took {restart_took:?}; casts sent when it ended: {sent_at_restart_end}; \
         deliveries: {} for {TOTAL} casts ({} duplicates); calls: {outcomes:?}; \
         connections made: publisher {}, server {}",
        records.len(),
        records.len() - distinct.len(),
        publisher.connections_made(),
        server_rpc.connections_made(),
    );
    assert!(all_delivered, "casts never delivered: {missing:?}");
    assert!(
        publisher.connections_made() >= 2 && server_rpc.connections_made() >= 2,
        "both sides reconnected by themselves"
    );
    assert!(outcomes.get("ok").copied().unwrap_or(0) > 0);
    // After the restart, calls work again.
    for k in 0..5u64 {
        let v: u64 = publisher
            .call(Topic::conductor(), "echo", &k, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(v, k);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_in_flight_during_a_restart_fails_at_once_with_connection_lost() {
    let _guard = EnsureRabbitRunning;
    assert!(rabbit_up(), "RabbitMQ must be running (make setup)");
    let bus = TestBus::amqp();
    let started = Arc::new(tokio::sync::Notify::new());
    let st = started.clone();
    let dispatcher = Dispatcher::new(Version::new(1, 0))
        .handle("slow_echo", move |_ctx, n: u64| {
            let st = st.clone();
            async move {
                st.notify_one();
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok::<_, RemoteError>(n)
            }
        })
        .handle(
            "echo",
            |_ctx, n: u64| async move { Ok::<_, RemoteError>(n) },
        );
    let server_rpc = bus.rpc().await;
    let _server = server_rpc
        .serve([Topic::conductor().into()], dispatcher)
        .await
        .unwrap();
    let caller = bus.rpc().await;
    let call = {
        let caller = caller.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = caller
                .call::<_, u64>(
                    Topic::conductor(),
                    "slow_echo",
                    &7u64,
                    Duration::from_secs(60),
                )
                .await;
            (r, t0.elapsed())
        })
    };
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("the handler started");
    let restart = tokio::task::spawn_blocking(restart_rabbitmq);
    let (result, took) = call.await.unwrap();
    println!("in-flight call ended after {took:?} with {result:?}");
    assert!(
        matches!(result, Err(RpcError::ConnectionLost { ref method, .. }) if method == "slow_echo"),
        "{result:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "failed when the connection dropped, not at its 60 s timeout"
    );
    restart.await.unwrap();
    // The same client calls again once the broker is back.
    let v: u64 = caller
        .call(Topic::conductor(), "echo", &8u64, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(v, 8);
}
