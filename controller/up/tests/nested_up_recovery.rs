//! `mica up` supervises its nested compute host: when L1's QEMU dies under a
//! running cloud, the death is noticed at once and said in the log and on
//! stderr, the servers that ran there are not shown ACTIVE while they are gone,
//! a new L1 boots, its agent registers again, and new servers build on it.

mod common;

use std::time::{Duration, Instant};

use common::Up;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn wait_for(what: &str, timeout: Duration, up: &Up, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}:\n{}",
            up.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn err_log(up: &Up) -> String {
    std::fs::read_to_string(&up.err).unwrap_or_default()
}

#[test]
fn nested_up_restarts_a_dead_compute_host() {
    if !common::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("state"), &[]);
    let admin = up.cli("mica");
    let demo = up.cli("mica-demo");
    let (host, _) = up.compute();

    let vm1 = demo.json(&[
        "server", "create", "--flavor", "m1.nano", "--image", "tiny", "--wait", "vm1",
    ]);
    assert_eq!(vm1["status"], "ACTIVE", "{vm1}");

    // L1 dies as it would in a kernel panic: its QEMU is gone at once.
    let pid = up.described()["qemu_pid"].as_u64().expect("qemu_pid") as i32;
    let killed = Instant::now();
    // SAFETY: kill(2) of the QEMU that this test's mica up started (its pid
    // from mica up's own compute.json).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    wait_for(
        "mica up did not say its compute host died",
        SECS(30),
        &up,
        || err_log(&up).contains(&format!("the nested compute host {host} died")),
    );
    let log = err_log(&up);
    assert!(log.contains(&format!("pid {pid}")), "{log}");
    // Reaped: no zombie QEMU left behind.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty(), "QEMU {pid} still listed: {stat}");

    // The lost server is not shown ACTIVE while it is gone.
    wait_for("vm1 still ACTIVE on a dead host", SECS(30), &up, || {
        demo.server("vm1")["status"] == "SHUTOFF"
    });
    eprintln!("vm1 SHUTOFF {:?} after the kill", killed.elapsed());

    // The host comes back with its service up, and builds again.
    wait_for("the compute host did not come back", SECS(240), &up, || {
        err_log(&up).contains(&format!("the nested compute host {host} is back"))
    });
    let new_pid = up.described()["qemu_pid"].as_u64().unwrap() as i32;
    assert_ne!(new_pid, pid, "compute.json names the new L1");
    wait_for(
        "the compute service is not up again",
        SECS(120),
        &up,
        || {
            let services = admin.json(&["compute", "service", "list", "--service", "nova-compute"]);
            services.as_array().into_iter().flatten().any(|s| {
                s["Host"] == host.as_str() && s["State"] == "up" && s["Status"] == "enabled"
            })
        },
    );
    eprintln!(
        "compute host back and up {:?} after the kill",
        killed.elapsed()
    );
    let vm2 = demo.json(&[
        "server", "create", "--flavor", "m1.nano", "--image", "tiny", "--wait", "vm2",
    ]);
    assert_eq!(vm2["status"], "ACTIVE", "{vm2}");
    let vm2_id = vm2["id"].as_str().unwrap();
    assert_eq!(admin.server(vm2_id)["OS-EXT-SRV-ATTR:host"], host.as_str());
    // And vm1 stays what it is: stopped, not resurrected behind the user's back.
    assert_eq!(demo.server("vm1")["status"], "SHUTOFF");
}
