//! Restarts the real RabbitMQ during a burst of builds (PostgreSQL,
//! scheduler and conductor in this process, simulated agents): every build
//! finishes ACTIVE once the broker is back.
//!
//! The binary's name starts with `rabbit_restart_`: `.config/nextest.toml`
//! runs it alone. It leaves RabbitMQ running.

mod common;
mod fleet;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet::{Bus, Fleet, Hosts};
use mica_controller::app::compute::states::vm;
use mica_controller::db::Backend;

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

fn await_startup() {
    let ok = as_root("rabbitmqctl")
        .args(["-q", "--timeout", "120", "await_startup"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "RabbitMQ did not come back");
}

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
        let up = as_root("rabbitmqctl")
            .args(["-q", "--timeout", "10", "status"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !up {
            let _ = as_root("/etc/init.d/rabbitmq-server").arg("start").status();
            await_startup();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_restart_during_a_burst_of_builds() {
    let _guard = EnsureRabbitRunning;
    let f = Arc::new(
        Fleet::start(
            Backend::Postgres,
            Bus::Amqp,
            &[Hosts::new("host", 5, 32, 32768, 500).build_delay(1000)],
            |c| {
                // Heartbeats cannot pass while the broker is away.
                c.compute.service_down_time_secs = 180;
                c.conductor.build_timeout_secs = 300;
            },
        )
        .await,
    );
    const N: usize = 100;
    let sent = Arc::new(AtomicUsize::new(0));
    let burst = {
        let (f, sent) = (f.clone(), sent.clone());
        tokio::spawn(async move {
            let mut uuids = Vec::new();
            for n in 0..N {
                let row = f.instance(&format!("vm-{n}"), 1, 512, 1);
                uuids.extend(f.create(&[row]).await);
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            uuids
        })
    };
    while sent.load(Ordering::SeqCst) < N / 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = sent.load(Ordering::SeqCst);
    tokio::task::spawn_blocking(restart_rabbitmq).await.unwrap();
    println!(
        "RabbitMQ restarted after {before} of {N} requests ({} sent when it was back)",
        sent.load(Ordering::SeqCst)
    );
    let uuids = burst.await.unwrap();
    let rows = f.settle(&uuids, Duration::from_secs(300)).await;
    let not_active: Vec<_> = rows
        .iter()
        .filter(|r| r.vm_state != vm::ACTIVE)
        .map(|r| (r.uuid.clone(), r.vm_state.clone()))
        .collect();
    assert!(not_active.is_empty(), "{not_active:?}");
    assert_eq!(f.allocated(&uuids).await.len(), N);
    f.check_capacity().await;
    // The outage really hit both sides: requests sent through it and builds
    // in flight.
    assert!(f.api.connections_made() > 1, "the API's client reconnected");
    assert!(f.rpc.connections_made() > 1, "the controller reconnected");
    let f = Arc::into_inner(f).expect("the burst is over");
    f.stop().await;
}
