//! Distributed Mica end to end, with the pinned `openstack` CLI as the
//! client: `mica-controller db sync`, `mica-controller bootstrap`, one
//! `mica-controller api scheduler conductor` process on PostgreSQL and
//! RabbitMQ, `mica init` for the first-start objects, and two compute hosts —
//! two nested test hosts, each running the real `mica-agent` with its own host
//! name and state. An admin places a server on a chosen host
//! (`--availability-zone nova:HOST`); a server group with anti-affinity puts
//! its two servers on different hosts; servers boot, stop, start and are
//! deleted without leaving anything on either host.

mod common;

use std::time::{Duration, Instant};

use common::Cli;
use common::distributed::Distributed;
use mica::compute::{NestedCompute, NestedComputeOptions};
use mica_tests::nested::JobOutput;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A compute host: `mica-agent` in a nested test host of its own (sharing
/// the machine with the other one).
struct Compute(NestedCompute);

impl Compute {
    fn start(name: &str, namespace: &str, image_port: u16) -> Compute {
        let bin = |b: &str| mica_tests::artifacts::workspace_binary(b).unwrap();
        let options = NestedComputeOptions {
            name: name.to_owned(),
            memory_mib: 2560,
            amqp_url: "amqp://mica:mica@127.0.0.1:5672/mica".into(),
            namespace: namespace.to_owned(),
            image_port,
            agent_bin: bin("mica-agent"),
            vmm_bin: bin("mica-vmm"),
            kernel: mica_tests::artifacts::GuestKernel::locate()
                .unwrap()
                .vmlinux(),
            agent_sets: [
                "agent.report_interval_s=2",
                "agent.sync_power_state_interval_s=30",
                "rpc.queue_expiry_s=600",
                "vmm.shutdown_timeout_s=20",
                "resources.reserved_host_memory_mb=256",
            ]
            .map(String::from)
            .to_vec(),
            saved_state: None,
            shared_lock: true,
            console_port: None,
            metadata: None,
        };
        Compute(NestedCompute::start(&options).expect("a nested compute host"))
    }

    fn sh(&self, script: &str) -> JobOutput {
        self.0.sh(script).unwrap()
    }

    fn vmms(&self) -> usize {
        self.sh("ps -eo args | grep -c '^[^ ]*mica-vmm --config' || true")
            .stdout
            .trim()
            .parse()
            .unwrap()
    }

    fn runs(&self, uuid: &str) -> bool {
        self.sh(&format!(
            "ps -eo args | grep -q '[m]ica-vmm --config /var/lib/mica/instances/{uuid}/'"
        ))
        .code
            == 0
    }

    /// The end of the agent's log.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.0.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

#[test]
fn nested_distributed_two_hosts() {
    if !common::available() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dist = Distributed::start(&rt, "info");
    let clouds = dist.clouds_yaml.clone();
    let cli = |cloud: &str| {
        let mut env = std::collections::BTreeMap::new();
        env.insert(
            "OS_CLIENT_CONFIG_FILE".to_owned(),
            clouds.display().to_string(),
        );
        env.insert("OS_CLOUD".to_owned(), cloud.to_owned());
        Cli { env }
    };
    let admin = cli("mica");
    let demo = cli("mica-demo");

    // Two compute hosts.
    let a = Compute::start("dist-a", &dist.namespace, dist.image_port);
    let b = Compute::start("dist-b", &dist.namespace, dist.image_port);
    let deadline = Instant::now() + SECS(120);
    loop {
        let h = admin.json(&["hypervisor", "list"]).to_string();
        if h.contains("dist-a") && h.contains("dist-b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hosts not registered: {h}\n--- a ---\n{}\n--- b ---\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Pings allowed in, in both projects' default groups (an admin sees
    // every project's, so by id).
    let groups = admin.json(&["security", "group", "list", "--project", "admin"]);
    let admin_default = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["Name"] == "default")
        .unwrap_or_else(|| panic!("{groups}"))["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    for (c, g) in [(&admin, admin_default.as_str()), (&demo, "default")] {
        c.allow_ping(g);
    }

    // An admin picks the host.
    for (host, c) in [("dist-b", &b), ("dist-a", &a)] {
        let name = format!("on-{host}");
        let s = admin.json(&[
            "server",
            "create",
            "--flavor",
            "m1.nano",
            "--image",
            "tiny",
            "--network",
            "shared",
            "--availability-zone",
            &format!("nova:{host}"),
            "--wait",
            &name,
        ]);
        assert_eq!(s["status"], "ACTIVE", "{s}");
        let s = admin.server(&name);
        assert_eq!(s["OS-EXT-SRV-ATTR:host"], host, "{s}");
        let uuid = s["id"].as_str().unwrap().to_owned();
        assert!(c.runs(&uuid), "no VMM of {name} on {host}:\n{}", c.log());
        let ip = common::ip_of(&s);
        let deadline = Instant::now() + SECS(60);
        while c
            .sh(&format!("busybox ping -c 1 -W 2 {ip} >/dev/null"))
            .code
            != 0
        {
            assert!(
                Instant::now() < deadline,
                "{name} does not answer pings on {host}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // A member may not pick the host.
    let e = demo
        .run(&[
            "server",
            "create",
            "--flavor",
            "m1.nano",
            "--image",
            "tiny",
            "--availability-zone",
            "nova:dist-a",
            "nope",
        ])
        .expect_err("a member cannot choose the host");
    assert!(e.contains("403"), "{e}");

    // Anti-affinity: two members of the group on different hosts.
    let group = demo.json(&[
        "server",
        "group",
        "create",
        "--policy",
        "anti-affinity",
        "apart",
    ]);
    let gid = group["id"].as_str().unwrap().to_owned();
    let mut hosts = Vec::new();
    for n in ["apart-1", "apart-2"] {
        let s = demo.json(&[
            "server",
            "create",
            "--flavor",
            "m1.nano",
            "--image",
            "tiny",
            "--hint",
            &format!("group={gid}"),
            n,
        ]);
        let uuid = s["id"].as_str().unwrap().to_owned();
        demo.wait_status(&uuid, "ACTIVE", SECS(180));
        let host = admin.server(&uuid)["OS-EXT-SRV-ATTR:host"]
            .as_str()
            .unwrap()
            .to_owned();
        let c = if host == "dist-a" { &a } else { &b };
        assert!(c.runs(&uuid), "no VMM of {n} on {host}");
        hosts.push(host);
    }
    assert_ne!(hosts[0], hosts[1], "anti-affinity members share a host");
    // A third member has nowhere to go.
    let third = demo.json(&[
        "server",
        "create",
        "--flavor",
        "m1.nano",
        "--image",
        "tiny",
        "--hint",
        &format!("group={gid}"),
        "apart-3",
    ]);
    let deadline = Instant::now() + SECS(120);
    loop {
        let s = demo.server(third["id"].as_str().unwrap());
        if s["status"] == "ERROR" {
            assert!(s.to_string().contains("No valid host"), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "apart-3 is {s}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Stop and start on whichever host.
    demo.ok(&["server", "stop", "apart-1"]);
    demo.wait_status("apart-1", "SHUTOFF", SECS(120));
    demo.ok(&["server", "start", "apart-1"]);
    demo.wait_status("apart-1", "ACTIVE", SECS(120));

    // Everything deleted: nothing left on either host.
    admin.ok(&["server", "delete", "--wait", "on-dist-a", "on-dist-b"]);
    demo.ok(&[
        "server", "delete", "--wait", "apart-1", "apart-2", "apart-3",
    ]);
    assert_eq!(a.vmms(), 0, "{}", a.log());
    assert_eq!(b.vmms(), 0, "{}", b.log());
    for c in [&a, &b] {
        let out = c.sh(
            "ls /var/lib/mica/instances 2>/dev/null | wc -l; ip -br link | grep -c '^tap' || true",
        );
        let counts: Vec<&str> = out.stdout.split_whitespace().collect();
        assert_eq!(
            counts,
            ["0", "0"],
            "{}: instance folders / taps left",
            c.0.name
        );
    }
    assert!(
        admin
            .ok(&["server", "list", "--all-projects", "-f", "value"])
            .trim()
            .is_empty()
    );
}
