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

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Cli;
use mica_controller::db::Backend;
use mica_controller::testing::TestDb;
use mica_tests::nested::{HOST_FROM_L1, JobOutput, NestedHost, NestedOptions};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + SECS(30);
        while self.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = common::read(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A compute host: a nested test host running `mica-agent`.
struct Compute {
    name: String,
    host: NestedHost,
}

impl Compute {
    fn start(name: &str, namespace: &str, image_port: u16) -> Compute {
        let mut opts = NestedOptions::new(name);
        opts.memory_mib = 2560;
        opts.host_ports = vec![5672, image_port];
        opts.shared_lock = true;
        let host = NestedHost::boot(opts).expect("the nested host boots");
        let out = host
            .run(
                "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
                 modprobe virtio_net\n\
                 for i in $(seq 1 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done\n\
                 if ! ip -4 addr show dev eth0 | grep -q 10.0.2.15; then\n\
                   ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2\n\
                 fi",
            )
            .unwrap();
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let vmm = mica_tests::artifacts::workspace_binary("mica-vmm").unwrap();
        let agent = mica_tests::artifacts::workspace_binary("mica-agent").unwrap();
        let kernel = mica_tests::artifacts::GuestKernel::locate()
            .unwrap()
            .vmlinux();
        let config = format!(
            "[agent]\nhost = \"{name}\"\nstate_dir = \"/var/lib/mica\"\nrun_dir = \"/run/mica\"\n\
             report_interval_s = 2\nsync_power_state_interval_s = 30\n\n\
             [rpc]\nurl = \"amqp://mica:mica@{HOST_FROM_L1}:5672/mica\"\nnamespace = \"{namespace}\"\n\
             queue_expiry_s = 600\n\n\
             [vmm]\nbinary = \"{}\"\nkernel = \"{}\"\n\
             cmdline = \"console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet\"\n\
             extra_cmdline = \"noxsave\"\nshutdown_timeout_s = 20\nstart_timeout_s = 60\n\n\
             [resources]\nreserved_host_memory_mb = 256\n# L1 disk is a small tmpfs; root disks are sparse.\ndisk_allocation_ratio = 20.0\n",
            vmm.display(),
            kernel.display()
        );
        std::fs::write(host.shared_dir().join("agent.toml"), config).unwrap();
        host.spawn(&format!(
            "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             exec {} --config /mica-job/agent.toml > /mica-job/agent.log 2>&1",
            agent.display()
        ))
        .unwrap();
        Compute {
            name: name.to_owned(),
            host,
        }
    }

    fn sh(&self, script: &str) -> JobOutput {
        self.host
            .run_timeout(
                &format!("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n{script}"),
                SECS(120),
            )
            .unwrap()
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

    fn log(&self) -> String {
        tail(&self.host.shared_dir().join("agent.log"), 30)
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
    let db = rt.block_on(TestDb::create(Backend::Postgres));
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("dist-{}", std::process::id());
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\nmax_connections = 8\n\n\
             [messaging]\ntransport_url = \"amqp://mica:mica@127.0.0.1:5672/mica\"\n\
             namespace = \"{ns}\"\nqueue_expiry_secs = 600\n\n\
             [api]\nidentity_listen = \"127.0.0.1:{}\"\ncompute_listen = \"127.0.0.1:{}\"\n\
             image_listen = \"127.0.0.1:{}\"\nplacement_listen = \"127.0.0.1:{}\"\n\
             network_listen = \"127.0.0.1:{}\"\nmetadata_listen = \"\"\nconsole_proxy_listen = \"\"\n\n\
             [image]\nstore_dir = \"{}\"\n\n\
             [bootstrap]\nadmin_password = \"admin-secret\"\n",
            db.url,
            ports[0],
            ports[1],
            ports[2],
            ports[3],
            ports[4],
            dir.path().join("images").display()
        ),
    )
    .unwrap();
    let ctl_bin = mica_tests::artifacts::workspace_binary("mica-controller").unwrap();
    for step in [&["db", "sync"][..], &["bootstrap"][..]] {
        let out = Command::new(&ctl_bin)
            .arg("--config")
            .arg(&config)
            .args(step)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mica-controller {step:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ctl_log = dir.path().join("controller.log");
    let _controller = Process(
        Command::new(&ctl_bin)
            .arg("--config")
            .arg(&config)
            .args(["api", "scheduler", "conductor"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&ctl_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let identity = format!("http://127.0.0.1:{}/v3", ports[0]);
    let deadline = Instant::now() + SECS(60);
    while std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_err() {
        assert!(Instant::now() < deadline, "{}", tail(&ctl_log, 40));
        std::thread::sleep(Duration::from_millis(100));
    }
    let clouds = dir.path().join("clouds.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_mica"))
        .args(["init", "--identity-url", &identity, "--image-internal-url"])
        .arg(format!("http://{HOST_FROM_L1}:{}", ports[2]))
        .arg("--clouds-yaml")
        .arg(&clouds)
        .env("MICA_ADMIN_PASSWORD", "admin-secret")
        .env("MICA_DEMO_PASSWORD", "demo-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mica init: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    let a = Compute::start("dist-a", &ns, ports[2]);
    let b = Compute::start("dist-b", &ns, ports[2]);
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
        c.ok(&[
            "security",
            "group",
            "rule",
            "create",
            "--ingress",
            "--protocol",
            "icmp",
            g,
        ]);
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
            c.name
        );
    }
    assert!(
        admin
            .ok(&["server", "list", "--all-projects", "-f", "value"])
            .trim()
            .is_empty()
    );
    drop(db);
}
