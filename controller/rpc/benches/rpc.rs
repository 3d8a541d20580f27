//! RPC figures for BENCHMARKS.md: call round-trip latency (p50/p99) and cast
//! throughput, on `memory://` and on the real RabbitMQ.
//!
//! ```sh
//! cargo bench -p mica-rpc --bench rpc
//! ```
//!
//! Environment: `MICA_BENCH_AMQP_URL` (default the `make setup` RabbitMQ),
//! `MICA_BENCH_CALLS` (2000), `MICA_BENCH_CASTS` (20000).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mica_rpc::{Dispatcher, RemoteError, Rpc, RpcOptions, Topic, Version};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// A request of a realistic small size (about 200 bytes of JSON).
#[derive(Serialize, Deserialize, Clone)]
struct Probe {
    instance_uuid: String,
    host: String,
    flavor: String,
    seq: u64,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Figures {
    transport: &'static str,
    p50: Duration,
    p99: Duration,
    cast_seq: f64,
    cast_par: f64,
}

async fn run(
    transport: &'static str,
    url: &str,
    calls: usize,
    casts: usize,
) -> Result<Figures, String> {
    let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let options = RpcOptions {
        namespace: ns,
        queue_expiry: Some(Duration::from_secs(600)),
        prefetch: 64,
        ..RpcOptions::default()
    };
    let server_rpc = Rpc::connect_with(url, options.clone())
        .await
        .map_err(|e| e.to_string())?;
    let client = Rpc::connect_with(url, options)
        .await
        .map_err(|e| e.to_string())?;

    let handled = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let all_done = Arc::new(Notify::new());
    let (h, t, d) = (handled.clone(), target.clone(), all_done.clone());
    let dispatcher = Dispatcher::new(Version::new(1, 0))
        .handle(
            "echo",
            |_ctx, p: Probe| async move { Ok::<_, RemoteError>(p) },
        )
        .handle("count", move |_ctx, _p: Probe| {
            let (h, t, d) = (h.clone(), t.clone(), d.clone());
            async move {
                if h.fetch_add(1, Ordering::SeqCst) + 1 == t.load(Ordering::SeqCst) {
                    d.notify_one();
                }
                Ok::<_, RemoteError>(())
            }
        });
    let _server = server_rpc
        .serve([Topic::conductor().into()], dispatcher)
        .await
        .map_err(|e| e.to_string())?;

    let probe = |seq| Probe {
        instance_uuid: "0b6f4c83-8c8e-4b6e-9d6a-2f3c9f1f7a10".into(),
        host: "compute-017.example.org".into(),
        flavor: "m1.small".into(),
        seq,
    };

    // Call round trip, one at a time.
    let timeout = Duration::from_secs(10);
    for i in 0..(calls / 10).max(10) {
        let _: Probe = client
            .call(Topic::conductor(), "echo", &probe(i as u64), timeout)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut lat = Vec::with_capacity(calls);
    for i in 0..calls {
        let t0 = Instant::now();
        let r: Probe = client
            .call(Topic::conductor(), "echo", &probe(i as u64), timeout)
            .await
            .map_err(|e| e.to_string())?;
        lat.push(t0.elapsed());
        assert_eq!(r.seq, i as u64);
    }
    lat.sort();

    // Casts, delivered and handled: first one sender awaiting each confirm,
    // then 64 senders at once. Timed until the server has handled them all.
    let mut rates = Vec::new();
    for (senders, n) in [(1usize, (casts / 10).max(100)), (64, casts)] {
        handled.store(0, Ordering::SeqCst);
        target.store(n, Ordering::SeqCst);
        let done = all_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..senders {
            let client = client.clone();
            let mine = n / senders + usize::from(s < n % senders);
            let p = probe(s as u64);
            tasks.push(tokio::spawn(async move {
                for _ in 0..mine {
                    client.cast(Topic::conductor(), "count", &p).await?;
                }
                Ok::<_, mica_rpc::RpcError>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().map_err(|e| e.to_string())?;
        }
        tokio::time::timeout(Duration::from_secs(300), done)
            .await
            .map_err(|_| {
                format!(
                    "only {} of {n} casts handled",
                    handled.load(Ordering::SeqCst)
                )
            })?;
        rates.push(n as f64 / t0.elapsed().as_secs_f64());
    }

    Ok(Figures {
        transport,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        cast_seq: rates[0],
        cast_par: rates[1],
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let calls = env_usize("MICA_BENCH_CALLS", 2000);
    let casts = env_usize("MICA_BENCH_CASTS", 20000);
    let amqp = std::env::var("MICA_BENCH_AMQP_URL")
        .unwrap_or_else(|_| "amqp://mica:mica@127.0.0.1:5672/mica".into());
    let mut rows = Vec::new();
    for (name, url) in [
        ("memory://", "memory://bench".to_string()),
        ("amqp://", amqp),
    ] {
        match rt.block_on(run(name, &url, calls, casts)) {
            Ok(f) => rows.push(f),
            Err(e) => eprintln!("{name}: skipped: {e}"),
        }
    }
    println!("{calls} sequential calls; casts timed until handled by one server (prefetch 64)");
    println!();
    println!("| transport | call p50 | call p99 | casts/s, 1 sender | casts/s, 64 senders |");
    println!("|-----------|---------:|---------:|------------------:|--------------------:|");
    for f in rows {
        println!(
            "| {} | {:.0} µs | {:.0} µs | {:.0} | {:.0} |",
            f.transport,
            f.p50.as_secs_f64() * 1e6,
            f.p99.as_secs_f64() * 1e6,
            f.cast_seq,
            f.cast_par
        );
    }
}
