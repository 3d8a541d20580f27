//! The RPC contract, run against both transports: `memory://` and the real
//! RabbitMQ (`amqp://`, started by `make setup`). Each test has its own
//! namespace, so they run in parallel without seeing each other.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Seen, TestBus, eventually};
use mica_rpc::{
    Context, Dispatcher, Method, RemoteError, Rpc, RpcError, Subscription, Topic, Version, codes,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

/// The one example message of the tests: a small typed method.
struct Add;
#[derive(Debug, Serialize, Deserialize)]
struct AddRequest {
    a: i64,
    b: i64,
}
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct AddResponse {
    sum: i64,
}
impl Method for Add {
    const NAME: &'static str = "add";
    const VERSION: Version = Version::new(1, 1);
    type Request = AddRequest;
    type Response = AddResponse;
}

/// A typed application error, as an agent would return.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum BuildError {
    ImageNotFound { image: String },
}

fn conductor_dispatcher(seen: Seen) -> Dispatcher {
    let s = seen.clone();
    Dispatcher::new(Version::new(1, 2))
        .handle_method::<Add>(|_ctx, req: AddRequest| async move {
            Ok::<_, RemoteError>(AddResponse { sum: req.a + req.b })
        })
        .handle(
            "whoami",
            |ctx: Context, _req: serde_json::Value| async move {
                Ok::<_, RemoteError>(json!({
                    "method": ctx.method, "request_id": ctx.request_id,
                    "version": ctx.version.to_string(), "kind": format!("{:?}", ctx.kind),
                }))
            },
        )
        .handle("sleep_ms", |_ctx, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, RemoteError>(ms)
        })
        .handle("build", |_ctx, image: String| async move {
            Err::<(), _>(
                RemoteError::new("build_failed", format!("image {image} not found"))
                    .with_data(&BuildError::ImageNotFound { image }),
            )
        })
        .handle("fail_with_string", |_ctx, _: ()| async move {
            Err::<(), String>("plain failure".into())
        })
        .handle("panic", |_ctx, _: ()| async move {
            if true {
                panic!("handler bug");
            }
            Ok::<(), RemoteError>(())
        })
        .handle("record", move |ctx: Context, v: serde_json::Value| {
            let s = s.clone();
            async move {
                s.push(&ctx.method, v);
                Ok::<_, RemoteError>(())
            }
        })
}

async fn call_round_trip(bus: TestBus) {
    let server_rpc = bus.rpc().await;
    let _server = server_rpc
        .serve(
            [Topic::conductor().into()],
            conductor_dispatcher(Seen::default()),
        )
        .await
        .unwrap();
    let rpc = bus.rpc().await;
    let resp: AddResponse = rpc
        .call(Topic::conductor(), "add", &json!({"a": 2, "b": 40}), T)
        .await
        .unwrap();
    assert_eq!(resp, AddResponse { sum: 42 });
    let resp = rpc
        .call_method::<Add>(Topic::conductor(), &AddRequest { a: -1, b: 1 }, T)
        .await
        .unwrap();
    assert_eq!(resp.sum, 0);
    // Context: request id and version travel.
    let who: serde_json::Value = rpc
        .with_request_id("req-7")
        .with_version(Version::new(1, 2))
        .call(Topic::conductor(), "whoami", &(), T)
        .await
        .unwrap();
    assert_eq!(
        who,
        json!({"method": "whoami", "request_id": "req-7", "version": "1.2", "kind": "Call"})
    );
    // Many concurrent calls each get their own reply.
    let calls = (0..50).map(|i| {
        let rpc = rpc.clone();
        async move {
            let r: AddResponse = rpc
                .call(Topic::conductor(), "add", &AddRequest { a: i, b: 1000 }, T)
                .await
                .unwrap();
            assert_eq!(r.sum, i + 1000);
        }
    });
    futures_join_all(calls).await;
}

async fn call_timeout(bus: TestBus) {
    let rpc = bus.rpc().await;
    // Nobody serves the scheduler topic.
    let started = Instant::now();
    let err = rpc
        .call::<_, serde_json::Value>(
            Topic::scheduler(),
            "anything",
            &(),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A server too slow for the caller's timeout.
    let server_rpc = bus.rpc().await;
    let _server = server_rpc
        .serve(
            [Topic::conductor().into()],
            conductor_dispatcher(Seen::default()),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let err = rpc
        .call::<_, u64>(
            Topic::conductor(),
            "sleep_ms",
            &1000u64,
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Timeout { method, after, .. } if method == "sleep_ms" && *after == Duration::from_millis(200)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(900));
    // The late reply is dropped harmlessly; the next call works.
    let r: u64 = rpc
        .call(Topic::conductor(), "sleep_ms", &1u64, T)
        .await
        .unwrap();
    assert_eq!(r, 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r: AddResponse = rpc
        .call(Topic::conductor(), "add", &AddRequest { a: 1, b: 1 }, T)
        .await
        .unwrap();
    assert_eq!(r.sum, 2);
}

async fn call_request_expires_unserved(bus: TestBus) {
    // A call nobody took within its timeout is not run by a server that
    // comes later.
    let seen = Seen::default();
    let rpc = bus.rpc().await;
    let err = rpc
        .call::<_, ()>(
            Topic::conductor(),
            "record",
            &json!("stale"),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }));
    // The broker's clock for the expiry starts when it gets the request,
    // a little after the caller's: give it that little.
    tokio::time::sleep(Duration::from_millis(100)).await;
    rpc.cast(Topic::conductor(), "record", &json!("fresh"))
        .await
        .unwrap();
    let _server = bus
        .rpc()
        .await
        .serve(
            [Topic::conductor().into()],
            conductor_dispatcher(seen.clone()),
        )
        .await
        .unwrap();
    assert!(eventually(T, || seen.count("record") >= 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.get("record"), vec![json!("fresh")]);
}

async fn remote_errors(bus: TestBus) {
    let _server = bus
        .rpc()
        .await
        .serve(
            [Topic::conductor().into()],
            conductor_dispatcher(Seen::default()),
        )
        .await
        .unwrap();
    let rpc = bus.rpc().await;
    let remote = |r: Result<serde_json::Value, RpcError>| match r {
        Err(RpcError::Remote(e)) => e,
        other => panic!("expected a remote error, got {other:?}"),
    };

    // A typed application error, with its data.
    let e = remote(rpc.call(Topic::conductor(), "build", &"cirros", T).await);
    assert_eq!(e.code, "build_failed");
    assert_eq!(e.message, "image cirros not found");
    assert_eq!(
        e.data::<BuildError>(),
        Some(BuildError::ImageNotFound {
            image: "cirros".into()
        })
    );
    let e = remote(
        rpc.call(Topic::conductor(), "fail_with_string", &(), T)
            .await,
    );
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("error", "plain failure")
    );

    // Errors of the RPC layer itself.
    let e = remote(rpc.call(Topic::conductor(), "no_such", &(), T).await);
    assert!(e.is(codes::NO_SUCH_METHOD), "{e:?}");
    let e = remote(
        rpc.call(Topic::conductor(), "add", &json!({"a": "two"}), T)
            .await,
    );
    assert!(e.is(codes::INVALID_REQUEST), "{e:?}");
    let e = remote(
        rpc.with_version(Version::new(1, 3))
            .call(Topic::conductor(), "add", &AddRequest { a: 1, b: 2 }, T)
            .await,
    );
    assert!(e.is(codes::UNSUPPORTED_VERSION), "{e:?}");
    let e = remote(
        rpc.with_version(Version::new(2, 0))
            .call(Topic::conductor(), "add", &AddRequest { a: 1, b: 2 }, T)
            .await,
    );
    assert!(e.is(codes::UNSUPPORTED_VERSION), "{e:?}");
    let e = remote(rpc.call(Topic::conductor(), "panic", &(), T).await);
    assert!(e.is(codes::HANDLER_PANICKED), "{e:?}");

    // The server is still there after all that.
    let r: AddResponse = rpc
        .call(Topic::conductor(), "add", &AddRequest { a: 20, b: 22 }, T)
        .await
        .unwrap();
    assert_eq!(r.sum, 42);
    // A reply that does not fit the expected response type.
    let err = rpc
        .call::<_, AddResponse>(Topic::conductor(), "sleep_ms", &1u64, T)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Decode { .. }), "{err:?}");
}

async fn cast_reaches_only_its_topic(bus: TestBus) {
    let (h1, h2, cond) = (Seen::default(), Seen::default(), Seen::default());
    let agent = |seen: Seen| {
        Dispatcher::new(Version::new(1, 0)).handle("record", move |_ctx, v: serde_json::Value| {
            let seen = seen.clone();
            async move {
                seen.push("record", v);
                Ok::<_, RemoteError>(())
            }
        })
    };
    let (r1, r2, r3) = (bus.rpc().await, bus.rpc().await, bus.rpc().await);
    let _s1 = r1
        .serve(Subscription::compute_host("h1"), agent(h1.clone()))
        .await
        .unwrap();
    let _s2 = r2
        .serve(Subscription::compute_host("h2"), agent(h2.clone()))
        .await
        .unwrap();
    let _s3 = r3
        .serve(
            [Topic::conductor().into()],
            conductor_dispatcher(cond.clone()),
        )
        .await
        .unwrap();
    let rpc = bus.rpc().await;
    for i in 0..5 {
        rpc.cast(Topic::compute("h1"), "record", &i).await.unwrap();
    }
    rpc.cast(Topic::compute("h2"), "record", &100)
        .await
        .unwrap();
    assert!(eventually(T, || h1.count("record") == 5 && h2.count("record") == 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Handlers run concurrently (up to the prefetch), so compare as sets.
    assert_eq!(sorted(h1.get("record")), (0..5).collect::<Vec<_>>());
    assert_eq!(h2.get("record"), vec![json!(100)]);
    assert_eq!(cond.total(), 0);
}

async fn competing_consumers_share_work(bus: TestBus) {
    // Two scheduler replicas, as two processes; each handles at most two
    // messages at a time, each taking 50 ms.
    let bus = bus.with_prefetch(2);
    let seen = Seen::default();
    let replica = |name: &'static str, seen: Seen| {
        Dispatcher::new(Version::new(1, 0)).handle("work", move |_ctx, n: u32| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen.push(name, json!(n));
                Ok::<_, RemoteError>(())
            }
        })
    };
    let (ra, rb) = (bus.rpc().await, bus.rpc().await);
    let _a = ra
        .serve([Topic::scheduler().into()], replica("a", seen.clone()))
        .await
        .unwrap();
    let _b = rb
        .serve([Topic::scheduler().into()], replica("b", seen.clone()))
        .await
        .unwrap();
    let rpc = bus.rpc().await;
    for n in 0..40u32 {
        rpc.cast(Topic::scheduler(), "work", &n).await.unwrap();
    }
    assert!(
        eventually(T, || seen.total() == 40).await,
        "{}",
        seen.total()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a, b) = (seen.get("a"), seen.get("b"));
    assert_eq!(a.len() + b.len(), 40, "each message handled once");
    let mut all: Vec<u64> = a.iter().chain(&b).map(|v| v.as_u64().unwrap()).collect();
    all.sort();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    assert!(
        a.len() >= 10 && b.len() >= 10,
        "a: {}, b: {}",
        a.len(),
        b.len()
    );
}

async fn fanout_reaches_every_compute(bus: TestBus) {
    let hosts = ["h1", "h2", "h3"];
    let seen = Seen::default();
    let mut servers = Vec::new();
    for host in hosts {
        let seen = seen.clone();
        let d = Dispatcher::new(Version::new(1, 0)).handle("refresh", move |_ctx, v: u32| {
            let seen = seen.clone();
            async move {
                seen.push(host, json!(v));
                Ok::<_, RemoteError>(())
            }
        });
        let rpc = bus.rpc().await;
        servers.push(
            rpc.serve(Subscription::compute_host(host), d)
                .await
                .unwrap(),
        );
    }
    let cond = Seen::default();
    let _c = bus
        .rpc()
        .await
        .serve(
            [Topic::conductor().into()],
            conductor_dispatcher(cond.clone()),
        )
        .await
        .unwrap();
    let rpc = bus.rpc().await;
    for v in 0..3u32 {
        rpc.cast(Topic::all_computes(), "refresh", &v)
            .await
            .unwrap();
    }
    assert!(eventually(T, || hosts.iter().all(|h| seen.count(h) == 3)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for h in hosts {
        assert_eq!(sorted(seen.get(h)), vec![0, 1, 2], "{h}");
    }
    assert_eq!(cond.total(), 0);
    // A call cannot go to a fanout.
    let err = rpc
        .call::<_, ()>(Topic::all_computes(), "refresh", &0, T)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::InvalidName(_)));
}

async fn unknown_fields_ignored(bus: TestBus) {
    #[derive(Serialize)]
    struct AddRequestV2 {
        a: i64,
        b: i64,
        rounding: &'static str,
    }
    let seen = Seen::default();
    let _server = bus
        .rpc()
        .await
        .serve(
            [Topic::conductor().into()],
            conductor_dispatcher(seen.clone()),
        )
        .await
        .unwrap();
    let rpc = bus.rpc().await;
    // A newer caller's request with a field this server does not know.
    let r: AddResponse = rpc
        .call(
            Topic::conductor(),
            "add",
            &AddRequestV2 {
                a: 1,
                b: 2,
                rounding: "up",
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(r.sum, 3);
    // A reply with more fields than the caller's type knows.
    #[derive(Deserialize)]
    struct JustMethod {
        method: String,
    }
    let r: JustMethod = rpc
        .call(Topic::conductor(), "whoami", &(), T)
        .await
        .unwrap();
    assert_eq!(r.method, "whoami");
    // An envelope from a newer sender, with fields this build does not know.
    let raw = json!({
        "mica_rpc": 1, "kind": "cast", "id": "raw-1", "method": "record", "version": "1.0",
        "payload": {"n": 1}, "priority": "high", "trace": {"span": "abc"}
    });
    rpc.publish_raw(Topic::conductor(), serde_json::to_vec(&raw).unwrap())
        .await
        .unwrap();
    assert!(eventually(T, || seen.count("record") == 1).await);
    assert_eq!(seen.get("record"), vec![json!({"n": 1})]);
}

async fn unparseable_goes_to_dead_letter_queue(bus: TestBus) {
    let seen = Seen::default();
    let _server = bus
        .rpc()
        .await
        .serve(
            [Topic::conductor().into()],
            conductor_dispatcher(seen.clone()),
        )
        .await
        .unwrap();
    let rpc = bus.rpc().await;
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json {".to_vec(), "unparseable"),
        (br#"{"kind": "cast"}"#.to_vec(), "unparseable"),
        (
            serde_json::to_vec(
                &json!({"mica_rpc": 2, "kind": "cast", "id": "x", "method": "record"}),
            )
            .unwrap(),
            "envelope format 2",
        ),
        (
            serde_json::to_vec(
                &json!({"mica_rpc": 1, "kind": "cast", "id": "y", "method": "add",
                "version": "1.0", "payload": {"a": "not a number"}}),
            )
            .unwrap(),
            "invalid payload",
        ),
        (
            serde_json::to_vec(
                &json!({"mica_rpc": 1, "kind": "cast", "id": "z", "method": "nope",
                "version": "1.0", "payload": null}),
            )
            .unwrap(),
            "no_such_method",
        ),
    ];
    for (body, _) in &bad {
        rpc.publish_raw(Topic::conductor(), body.clone())
            .await
            .unwrap();
    }
    // The consumer keeps running: good messages after the bad ones are served.
    rpc.cast(Topic::conductor(), "record", &"after")
        .await
        .unwrap();
    let r: AddResponse = rpc
        .call(Topic::conductor(), "add", &AddRequest { a: 2, b: 2 }, T)
        .await
        .unwrap();
    assert_eq!(r.sum, 4);
    assert!(eventually(T, || seen.count("record") == 1).await);

    let mut letters = Vec::new();
    let deadline = Instant::now() + T;
    while letters.len() < 5 && Instant::now() < deadline {
        letters.extend(rpc.take_dead_letters(100).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(letters.len(), 5, "{letters:?}");
    // Dead-lettered concurrently: match them by body.
    for (body, reason) in &bad {
        let letter = letters
            .iter()
            .find(|l| &l.body == body)
            .unwrap_or_else(|| panic!("{} not dead-lettered", String::from_utf8_lossy(body)));
        assert!(
            letter.reason.contains(reason),
            "{:?} vs {reason}",
            letter.reason
        );
        assert_eq!(letter.queue, format!("{}.conductor", bus.options.namespace));
    }
    assert!(rpc.take_dead_letters(100).await.unwrap().is_empty());
    assert_eq!(seen.get("record"), vec![json!("after")]);
}

async fn graceful_shutdown_finishes_work(bus: TestBus) {
    let started = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let dispatcher = || {
        let (s, d) = (started.clone(), done.clone());
        Dispatcher::new(Version::new(1, 0)).handle("slow", move |_ctx, _: ()| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                d.fetch_add(1, Ordering::SeqCst);
                Ok::<_, RemoteError>(())
            }
        })
    };
    let server_rpc = bus.rpc().await;
    let server = server_rpc
        .serve([Topic::conductor().into()], dispatcher())
        .await
        .unwrap();
    let rpc = bus.rpc().await;
    for _ in 0..3 {
        rpc.cast(Topic::conductor(), "slow", &()).await.unwrap();
    }
    assert!(eventually(T, || started.load(Ordering::SeqCst) == 3).await);
    assert_eq!(done.load(Ordering::SeqCst), 0);
    server.shutdown().await;
    assert_eq!(
        done.load(Ordering::SeqCst),
        3,
        "the three in flight finished before shutdown returned"
    );
    // They were acked: a new server on the topic gets none of them again.
    let _again = server_rpc
        .serve([Topic::conductor().into()], dispatcher())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(started.load(Ordering::SeqCst), 3);
    // …and it does serve new ones.
    rpc.cast(Topic::conductor(), "slow", &()).await.unwrap();
    assert!(eventually(T, || done.load(Ordering::SeqCst) == 4).await);
}

fn sorted(values: Vec<serde_json::Value>) -> Vec<u64> {
    let mut v: Vec<u64> = values.iter().map(|v| v.as_u64().unwrap()).collect();
    v.sort();
    v
}

async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        h.await.unwrap();
    }
}

#[allow(dead_code)]
fn _assert_rpc_is_send_sync(rpc: Rpc) -> impl Send + Sync {
    rpc
}

macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::TestBus::memory()).await
                }
            )*
        }
        mod amqp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::TestBus::amqp()).await
                }
            )*
        }
    };
}

on_both_transports!(
    call_round_trip,
    call_timeout,
    call_request_expires_unserved,
    remote_errors,
    cast_reaches_only_its_topic,
    competing_consumers_share_work,
    fanout_reaches_every_compute,
    unknown_fields_ignored,
    unparseable_goes_to_dead_letter_queue,
    graceful_shutdown_finishes_work,
);
