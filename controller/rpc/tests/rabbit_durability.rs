//! RabbitMQ specifics, against the real server: what is kept when nobody is
//! listening, and what comes back when a consumer dies before its ack.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Seen, TestBus, eventually};
use mica_rpc::{Context, Dispatcher, RemoteError, Subscription, Topic, Version};
use serde_json::json;
use tokio::sync::Notify;

const T: Duration = Duration::from_secs(15);

fn recorder(seen: Seen) -> Dispatcher {
    Dispatcher::new(Version::new(1, 0)).handle(
        "record",
        move |ctx: Context, v: serde_json::Value| {
            let seen = seen.clone();
            async move {
                seen.push(
                    "record",
                    json!({"v": v, "id": ctx.id, "redelivered": ctx.redelivered}),
                );
                Ok::<_, RemoteError>(())
            }
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_published_before_any_consumer_are_delivered_later() {
    let bus = TestBus::amqp();
    // A publisher process casts to topics nobody has ever consumed, then
    // goes away: the broker alone holds the messages.
    {
        let publisher = bus.rpc().await;
        for i in 0..10 {
            publisher
                .cast(Topic::conductor(), "record", &i)
                .await
                .unwrap();
        }
        publisher
            .cast(Topic::compute("late-host"), "record", &"for the agent")
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (conductor, agent) = (Seen::default(), Seen::default());
    let rpc = bus.rpc().await;
    let _c = rpc
        .serve([Topic::conductor().into()], recorder(conductor.clone()))
        .await
        .unwrap();
    let _a = rpc
        .serve(
            Subscription::compute_host("late-host"),
            recorder(agent.clone()),
        )
        .await
        .unwrap();
    assert!(
        eventually(T, || conductor.count("record") == 10
            && agent.count("record") == 1)
        .await
    );
    let mut got: Vec<u64> = conductor
        .get("record")
        .iter()
        .map(|r| r["v"].as_u64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(agent.get("record")[0]["v"], json!("for the agent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_kept_for_a_member_that_is_away() {
    // A compute agent that subscribed once keeps its fanout queue: fanouts
    // sent while it restarts wait for it.
    let bus = TestBus::amqp();
    let seen = Seen::default();
    let agent = bus.rpc().await;
    let server = agent
        .serve(Subscription::compute_host("h9"), recorder(seen.clone()))
        .await
        .unwrap();
    server.shutdown().await;
    drop(agent);
    let rpc = bus.rpc().await;
    rpc.cast(Topic::all_computes(), "record", &"while away")
        .await
        .unwrap();
    let agent = bus.rpc().await;
    let _server = agent
        .serve(Subscription::compute_host("h9"), recorder(seen.clone()))
        .await
        .unwrap();
    assert!(eventually(T, || seen.count("record") == 1).await);
    assert_eq!(seen.get("record")[0]["v"], json!("while away"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_of_a_consumer_that_dies_before_acking_goes_to_another() {
    let bus = TestBus::amqp();
    // Replica A takes the message and hangs in its handler; replica B is idle.
    let started = Arc::new(Notify::new());
    let a_seen = Seen::default();
    let (s, a) = (started.clone(), a_seen.clone());
    let hangs = Dispatcher::new(Version::new(1, 0)).handle(
        "record",
        move |ctx: Context, v: serde_json::Value| {
            let (s, a) = (s.clone(), a.clone());
            async move {
                a.push("record", json!({"v": v, "id": ctx.id}));
                s.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, RemoteError>(())
            }
        },
    );
    let rpc_a = bus.rpc().await;
    let server_a = rpc_a
        .serve([Topic::conductor().into()], hangs)
        .await
        .unwrap();

    let publisher = bus.rpc().await;
    publisher
        .cast(Topic::conductor(), "record", &"precious")
        .await
        .unwrap();
    tokio::time::timeout(T, started.notified())
        .await
        .expect("A got the message");

    let b_seen = Seen::default();
    let rpc_b = bus.rpc().await;
    let _server_b = rpc_b
        .serve([Topic::conductor().into()], recorder(b_seen.clone()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b_seen.count("record"), 0, "A holds it unacked");

    // A crashes: its server and its connection go, without an ack.
    drop(server_a);
    drop(rpc_a);
    assert!(
        eventually(T, || b_seen.count("record") == 1).await,
        "redelivered to B"
    );
    let got = &b_seen.get("record")[0];
    assert_eq!(got["v"], json!("precious"));
    assert_eq!(got["redelivered"], json!(true));
    assert_eq!(got["id"], a_seen.get("record")[0]["id"], "the same message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_fast_and_no_broker_times_out() {
    let bus = TestBus::amqp();
    let wrong = bus.url.replacen("mica:mica@", "mica:wrong@", 1);
    assert_ne!(wrong, bus.url, "the test expects the mica:mica credentials");
    let t0 = std::time::Instant::now();
    let err = mica_rpc::Rpc::connect_with(&wrong, bus.options.clone())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, mica_rpc::RpcError::Broker(ref m) if m.contains("ACCESS_REFUSED")),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));

    let mut options = bus.options.clone();
    options.connect_timeout = Duration::from_millis(500);
    let t0 = std::time::Instant::now();
    let err = mica_rpc::Rpc::connect_with("amqp://mica:mica@127.0.0.1:1/mica", options)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, mica_rpc::RpcError::Unavailable(_)), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

/// Asks the broker to close every connection whose client properties
/// mention `marker` (our connection names carry the test's namespace).
fn broker_closes_connections(marker: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl (run the tests as root, as make test does)");
    let listing = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for pid in &pids {
        let ok = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "closed by a mica-rpc test"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "close_connection {pid}");
    }
    pids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_are_reopened() {
    let mut bus = TestBus::amqp();
    let marker = format!("mica-rpc test {}", bus.options.namespace);
    bus.options.connection_name = Some(marker.clone());
    let started = Arc::new(Notify::new());
    let seen = Seen::default();
    let st = started.clone();
    let dispatcher = recorder(seen.clone())
        .handle("slow_echo", move |_ctx, n: u64| {
            let st = st.clone();
            async move {
                st.notify_one();
                // Longer than the rabbitmqctl calls below (about 1 s each).
                tokio::time::sleep(Duration::from_secs(10)).await;
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
    for i in 0..5 {
        caller.cast(Topic::conductor(), "record", &i).await.unwrap();
    }
    assert!(eventually(T, || seen.count("record") == 5).await);

    let t0 = std::time::Instant::now();
    let call = {
        let caller = caller.clone();
        tokio::spawn(async move {
            caller
                .call::<_, u64>(
                    Topic::conductor(),
                    "slow_echo",
                    &1u64,
                    Duration::from_secs(30),
                )
                .await
        })
    };
    tokio::time::timeout(T, started.notified())
        .await
        .expect("handler started");
    let closed = tokio::task::spawn_blocking(move || broker_closes_connections(&marker))
        .await
        .unwrap();
    assert_eq!(closed, 2, "the server's and the caller's connections");
    let result = call.await.unwrap();
    assert!(
        matches!(result, Err(mica_rpc::RpcError::ConnectionLost { .. })),
        "{result:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "failed when its connection closed"
    );

    // Both sides come back by themselves.
    for i in 5..10 {
        caller.cast(Topic::conductor(), "record", &i).await.unwrap();
    }
    assert!(
        eventually(T, || {
            let mut got: Vec<u64> = seen
                .get("record")
                .iter()
                .map(|r| r["v"].as_u64().unwrap())
                .collect();
            got.sort();
            got.dedup();
            got == (0..10).collect::<Vec<_>>()
        })
        .await,
        "{:?}",
        seen.get("record")
    );
    let v: u64 = caller
        .call(Topic::conductor(), "echo", &5u64, T)
        .await
        .unwrap();
    assert_eq!(v, 5);
    assert!(caller.connections_made() >= 2 && server_rpc.connections_made() >= 2);
}
