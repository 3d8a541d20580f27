//! The real `openstack` and `nova` CLIs (pinned in `~/.cache/mica/venv`)
//! against `mica-controller api`, on each database: every command of
//! `shared/reference/openstack-cli-requests.md` that does not need a
//! compute host to run servers. Servers stay in BUILD (no conductor runs
//! here), so the commands that need a running server are checked to be
//! refused the way Nova refuses them. One compute host is registered the
//! way an agent would (service, node, placement provider) for the
//! aggregate, hypervisor, service and zone commands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mica_controller::config;
use mica_controller::db::{Backend, Db, hosts};
use mica_controller::testing::TestDb;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_cli_postgres() {
    session(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_cli_sqlite() {
    session(Backend::Sqlite).await;
}

struct Controller(Option<Child>);

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Clone)]
struct Cli {
    env: BTreeMap<String, String>,
    dir: PathBuf,
}

impl Cli {
    fn as_user(&self, user: &str, password: &str, project: &str) -> Cli {
        let mut env = self.env.clone();
        env.insert("OS_USERNAME".into(), user.into());
        env.insert("OS_PASSWORD".into(), password.into());
        env.insert("OS_PROJECT_NAME".into(), project.into());
        Cli {
            env,
            dir: self.dir.clone(),
        }
    }

    fn run_bin(&self, bin: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(mica_tests::venv_bin(bin))
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .envs(&self.env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "{bin} {} failed: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        self.run_bin("openstack", args)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-f", "json"]);
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn value(&self, args: &[&str]) -> String {
        let mut a = args.to_vec();
        a.extend(["-f", "value"]);
        self.ok(&a).trim().to_owned()
    }

    fn nova(&self, args: &[&str]) -> String {
        self.run_bin("nova", args).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn column(list: &Value, name: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[name].as_str().unwrap_or_default().to_owned())
        .collect();
    v.sort();
    v
}

async fn register_host(db_url: &str, placement: &str, token: &str, host: &str) {
    let http = reqwest::Client::new();
    let uuid = uuid::Uuid::new_v4().to_string();
    let r = http
        .post(format!("{placement}/resource_providers"))
        .header("x-auth-token", token)
        .header("openstack-api-version", "placement 1.20")
        .json(&json!({"name": host, "uuid": uuid}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .put(format!("{placement}/resource_providers/{uuid}/inventories"))
        .header("x-auth-token", token)
        .header("openstack-api-version", "placement 1.20")
        .json(&json!({"resource_provider_generation": 0, "inventories": {
            "VCPU": {"total": 4}, "MEMORY_MB": {"total": 8192}, "DISK_GB": {"total": 50}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let db = Db::connect(&config::Database {
        url: db_url.to_owned(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    hosts::register_service(&mut conn, host, "nova-compute", "compute", "0.1.0")
        .await
        .unwrap();
    hosts::upsert_compute_node(
        &mut conn,
        &hosts::NodeReport {
            uuid,
            host: host.into(),
            hypervisor_hostname: host.into(),
            hypervisor_type: "mica".into(),
            hypervisor_version: 1,
            host_ip: "192.0.2.20".into(),
            cpu_info: "{}".into(),
            vcpus: 4,
            memory_mb: 8192,
            local_gb: 50,
            running_vms: 0,
        },
    )
    .await
    .unwrap();
    drop(conn);
    db.close().await;
}

/// A heartbeat from the fake host's agent (the conductor records them).
async fn heartbeat(db_url: &str, host: &str) {
    let db = Db::connect(&config::Database {
        url: db_url.to_owned(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        hosts::heartbeat(db.pool(), host, "nova-compute")
            .await
            .unwrap()
    );
    db.close().await;
}

async fn session(backend: Backend) {
    let db = TestDb::create(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..5).map(|_| mica_tests::free_port()).collect();
    let (identity, image, placement, compute, network) =
        (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let cfg = format!(
        "[database]\nurl = \"{}\"\n\
         [messaging]\ntransport_url = \"memory://cli\"\n\
         [api]\nidentity_listen = \"127.0.0.1:{identity}\"\nimage_listen = \"127.0.0.1:{image}\"\n\
         placement_listen = \"127.0.0.1:{placement}\"\ncompute_listen = \"127.0.0.1:{compute}\"\n\
         network_listen = \"127.0.0.1:{network}\"\nmetadata_listen = \"\"\nconsole_proxy_listen = \"\"\n\
         [image]\nstore_dir = \"{}\"\n\
         [identity]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n",
        db.url,
        dir.path().join("images").display()
    );
    let cfg_path = dir.path().join("controller.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let controller = env!("CARGO_BIN_EXE_mica-controller");
    let admin_pw = "cli-admin-pw";
    let run = |args: &[&str]| {
        let out = Command::new(controller)
            .arg("--config")
            .arg(&cfg_path)
            .args(args)
            .env("MICA_BOOTSTRAP_ADMIN_PASSWORD", admin_pw)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mica-controller {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["db", "sync"]);
    let boot = run(&["bootstrap"]);
    assert!(
        boot.contains("catalog: compute") && boot.contains("network: shared"),
        "{boot}"
    );
    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    // Only the API: no conductor builds anything, so servers stay in BUILD.
    let child = Command::new(controller)
        .arg("--config")
        .arg(&cfg_path)
        .arg("api")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _guard = Controller(Some(child));
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http
        .get(format!("http://127.0.0.1:{compute}/v2.1"))
        .send()
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "controller did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let env: BTreeMap<String, String> = [
        ("OS_AUTH_URL", format!("http://127.0.0.1:{identity}/v3")),
        ("OS_USERNAME", "admin".into()),
        ("OS_PASSWORD", admin_pw.into()),
        ("OS_PROJECT_NAME", "admin".into()),
        ("OS_USER_DOMAIN_NAME", "Default".into()),
        ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
        ("OS_IDENTITY_API_VERSION", "3".into()),
        ("OS_REGION_NAME", "RegionOne".into()),
        ("OS_INTERFACE", "public".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cli = Cli {
        env,
        dir: dir.path().to_owned(),
    };
    let token = cli.value(&["token", "issue", "-c", "id"]);
    register_host(
        &db.url,
        &format!("http://127.0.0.1:{placement}"),
        &token,
        "compute1",
    )
    .await;

    // Flavors.
    let tiny = cli.json(&[
        "flavor", "create", "--ram", "512", "--disk", "1", "--vcpus", "1", "m1.tiny",
    ]);
    assert_eq!(tiny["ram"], 512);
    let small = cli.json(&[
        "flavor", "create", "--ram", "1024", "--disk", "2", "--vcpus", "2", "--id", "42",
        "m1.small",
    ]);
    assert_eq!(small["id"], "42");
    assert_eq!(
        column(&cli.json(&["flavor", "list"]), "Name"),
        ["m1.small", "m1.tiny"]
    );
    assert_eq!(cli.json(&["flavor", "show", "m1.tiny"])["vcpus"], 1);
    // Images (for servers).
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0x5au8; 1 << 20]).unwrap();
    let img = cli.json(&[
        "image",
        "create",
        "--file",
        disk.to_str().unwrap(),
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "cirros",
    ]);
    assert_eq!(img["status"], "active");
    assert_eq!(column(&cli.json(&["image", "list"]), "Name"), ["cirros"]);
    // Key pairs: import, and generate a real key.
    let key = dir.path().join("id_test");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cli", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let k1 = cli.json(&["keypair", "create", "--public-key", "./id_test.pub", "k1"]);
    assert_eq!(k1["name"], "k1");
    let pem = cli.ok(&["keypair", "create", "k2"]);
    assert!(pem.contains("BEGIN OPENSSH PRIVATE KEY"), "{pem}");
    let pem_path = dir.path().join("k2.pem");
    std::fs::write(&pem_path, &pem).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pem_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let derived = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&pem_path)
        .output()
        .unwrap();
    assert!(
        derived.status.success(),
        "ssh-keygen reads the generated key"
    );
    assert_eq!(
        column(&cli.json(&["keypair", "list"]), "Name"),
        ["k1", "k2"]
    );
    let shown = cli.json(&["keypair", "show", "k1"]);
    assert_eq!(shown["fingerprint"], k1["fingerprint"]);

    // Servers: accepted and listed in BUILD.
    let vm1 = cli.json(&[
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "cirros",
        "--key-name",
        "k1",
        "--nic",
        "none",
        "vm1",
    ]);
    assert_eq!(vm1["status"], "BUILD");
    assert_eq!(vm1["OS-EXT-STS:task_state"], "scheduling");
    assert_eq!(vm1["key_name"], "k1");
    let vm2 = cli.json(&[
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "cirros",
        "--key-name",
        "k1",
        "--nic",
        "auto",
        "vm2",
    ]);
    assert_eq!(vm2["status"], "BUILD");
    let list = cli.json(&["server", "list"]);
    assert_eq!(column(&list, "Name"), ["vm1", "vm2"]);
    assert_eq!(column(&list, "Status"), ["BUILD", "BUILD"]);
    assert_eq!(cli.json(&["server", "show", "vm1"])["name"], "vm1");
    assert_eq!(
        cli.value(&["server", "show", "vm1", "-c", "status"]),
        "BUILD"
    );
    // vm2 got a port with an address on the shared network.
    let ports = cli.json(&["port", "list", "--server", "vm2"]);
    assert_eq!(ports.as_array().unwrap().len(), 1);
    // Actions a BUILD server refuses, as Nova does.
    for action in [
        vec!["server", "stop", "vm1"],
        vec!["server", "start", "vm1"],
        vec!["server", "reboot", "vm1"],
        vec!["server", "pause", "vm1"],
        vec!["server", "suspend", "vm1"],
        vec!["server", "resize", "--flavor", "m1.small", "vm1"],
    ] {
        let e = cli.run(&action).unwrap_err();
        assert!(e.contains("while it is in vm_state building"), "{e}");
    }

    // Server groups.
    let g = cli.json(&[
        "server",
        "group",
        "create",
        "--policy",
        "anti-affinity",
        "g1",
    ]);
    assert_eq!(g["policy"], "anti-affinity");
    assert_eq!(
        column(&cli.json(&["server", "group", "list"]), "Name"),
        ["g1"]
    );
    // Aggregates, zones, hypervisors, services.
    let agg = cli.json(&["aggregate", "create", "--zone", "az1", "agg1"]);
    assert_eq!(agg["availability_zone"], "az1");
    cli.ok(&["aggregate", "add", "host", "agg1", "compute1"]);
    cli.ok(&["aggregate", "set", "--property", "ssd=true", "agg1"]);
    let shown = cli.json(&["aggregate", "show", "agg1"]);
    assert_eq!(shown["hosts"], json!(["compute1"]));
    assert_eq!(shown["properties"]["ssd"], "true");
    heartbeat(&db.url, "compute1").await;
    let zones = cli.json(&["availability", "zone", "list"]);
    assert_eq!(column(&zones, "Zone Name"), ["az1"]);
    let long = cli.json(&["availability", "zone", "list", "--compute", "--long"]);
    assert_eq!(long[0]["Host Name"], "compute1");
    assert_eq!(long[0]["Service Name"], "nova-compute");
    let hv = cli.json(&["hypervisor", "list"]);
    assert_eq!(column(&hv, "Hypervisor Hostname"), ["compute1"]);
    let hv1 = cli.json(&["hypervisor", "show", "compute1"]);
    assert_eq!(hv1["hypervisor_hostname"], "compute1");
    heartbeat(&db.url, "compute1").await;
    let services = cli.json(&["compute", "service", "list"]);
    assert_eq!(services[0]["Host"], "compute1");
    assert_eq!(services[0]["State"], "up");
    assert_eq!(services[0]["Zone"], "az1");
    // Quotas and limits.
    let q = cli.json(&["quota", "show"]);
    let find = |q: &Value, name: &str| -> Value {
        q.as_array()
            .unwrap()
            .iter()
            .find(|r| r["Resource"] == name)
            .map(|r| r["Limit"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(find(&q, "instances"), 10);
    assert_eq!(
        find(&cli.json(&["quota", "show", "--default"]), "cores"),
        20
    );
    cli.ok(&[
        "quota",
        "set",
        "--instances",
        "20",
        "--cores",
        "40",
        "admin",
    ]);
    let usage = cli.json(&["quota", "show", "--usage"]);
    let inst = usage
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Resource"] == "instances")
        .unwrap()
        .clone();
    assert_eq!(
        (inst["Limit"].clone(), inst["In Use"].clone()),
        (json!(20), json!(2))
    );
    let limits = cli.json(&["limits", "show", "--absolute"]);
    let used = limits
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Name"] == "total_instances_used")
        .unwrap()
        .clone();
    assert_eq!(used["Value"], 2);
    // Networks.
    assert_eq!(column(&cli.json(&["network", "list"]), "Name"), ["shared"]);
    let net = cli.json(&["network", "create", "net1"]);
    assert_eq!(net["shared"], false);
    let sub = cli.json(&[
        "subnet",
        "create",
        "--network",
        "net1",
        "--subnet-range",
        "192.168.50.0/24",
        "--dns-nameserver",
        "1.1.1.1",
        "sub1",
    ]);
    assert_eq!(sub["gateway_ip"], "192.168.50.1");
    assert_eq!(
        column(&cli.json(&["subnet", "list"]), "Name"),
        ["shared-subnet", "sub1"]
    );
    let port = cli.json(&[
        "port",
        "create",
        "--network",
        "net1",
        "--fixed-ip",
        "subnet=sub1,ip-address=192.168.50.77",
        "p1",
    ]);
    assert!(
        port["fixed_ips"].to_string().contains("192.168.50.77"),
        "{port}"
    );
    assert!(column(&cli.json(&["port", "list"]), "Name").contains(&"p1".to_owned()));
    // Security groups.
    let web = cli.json(&["security", "group", "create", "--description", "web", "web"]);
    assert_eq!(web["name"], "web");
    let rule = cli.json(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "web",
    ]);
    assert_eq!(rule["port_range_min"], 22);
    let rules = cli.json(&["security", "group", "rule", "list", "web"]);
    assert_eq!(rules.as_array().unwrap().len(), 3);
    assert_eq!(
        column(&cli.json(&["security", "group", "list"]), "Name"),
        ["default", "web"]
    );
    cli.ok(&[
        "security",
        "group",
        "rule",
        "delete",
        rule["id"].as_str().unwrap(),
    ]);
    assert_eq!(
        cli.json(&["security", "group", "rule", "list", "web"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    cli.ok(&["server", "add", "security", "group", "vm1", "web"]);
    let sg = cli.json(&["server", "show", "vm1", "-c", "security_groups"]);
    assert!(sg.to_string().contains("web"), "{sg}");
    cli.ok(&["server", "remove", "security", "group", "vm1", "web"]);
    let sg = cli.json(&["server", "show", "vm1", "-c", "security_groups"]);
    assert!(!sg.to_string().contains("web"), "{sg}");

    // Deletes.
    cli.ok(&["port", "delete", "p1"]);
    cli.ok(&["subnet", "delete", "sub1"]);
    cli.ok(&["network", "delete", "net1"]);
    assert_eq!(column(&cli.json(&["network", "list"]), "Name"), ["shared"]);
    cli.ok(&["server", "delete", "vm2"]);
    cli.ok(&["server", "delete", "--wait", "vm1"]);
    assert!(cli.json(&["server", "list"]).as_array().unwrap().is_empty());
    cli.ok(&["keypair", "delete", "k1"]);
    cli.ok(&["flavor", "delete", "m1.small"]);
    let again = cli
        .run(&[
            "flavor", "create", "--ram", "512", "--disk", "1", "--vcpus", "1", "m1.tiny",
        ])
        .unwrap_err();
    assert!(
        again.contains("409") || again.contains("already exists"),
        "{again}"
    );

    // The default group on a server with no port, and the older clients.
    let vm3 = cli.json(&[
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "cirros",
        "--nic",
        "none",
        "--security-group",
        "default",
        "vm3",
    ]);
    assert_eq!(vm3["status"], "BUILD");
    cli.ok(&["server", "add", "security", "group", "vm3", "default"]);
    let sg = cli.json(&["server", "show", "vm3", "-c", "security_groups"]);
    assert!(sg.to_string().contains("default"), "{sg}");
    let e = cli
        .run(&["server", "remove", "security", "group", "vm3", "web"])
        .unwrap_err();
    assert!(e.contains("not associated"), "{e}");
    cli.ok(&["server", "remove", "security", "group", "vm3", "default"]);
    let listed = cli.nova(&["list"]);
    assert!(
        listed.contains("vm3") && listed.contains("BUILD"),
        "{listed}"
    );
    let shown = cli.nova(&["show", "vm3"]);
    assert!(shown.contains("m1.tiny"), "{shown}");
    let booted = cli.nova(&[
        "boot", "--flavor", "m1.tiny", "--image", "cirros", "--nic", "none", "vm4",
    ]);
    assert!(booted.contains("BUILD"), "{booted}");
    assert!(cli.nova(&["hypervisor-list"]).contains("compute1"));
    assert!(cli.nova(&["service-list"]).contains("nova-compute"));
    let old = cli.json(&["--os-compute-api-version", "2.1", "server", "list"]);
    assert_eq!(column(&old, "Name"), ["vm3", "vm4"]);
    let old = cli.json(&["--os-compute-api-version", "2.1", "server", "show", "vm3"]);
    assert_eq!(old["status"], "BUILD");
    let vm5 = cli.json(&[
        "--os-compute-api-version",
        "2.1",
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "cirros",
        "vm5",
    ]);
    assert_eq!(vm5["status"], "BUILD");
    cli.ok(&["server", "delete", "vm3", "vm4", "vm5"]);
    assert!(cli.json(&["server", "list"]).as_array().unwrap().is_empty());
    cli.ok(&["image", "delete", "cirros"]);

    // A member: their own servers, no admin APIs.
    cli.ok(&["project", "create", "demo"]);
    cli.ok(&[
        "user",
        "create",
        "--password",
        "alice-pw",
        "--project",
        "demo",
        "alice",
    ]);
    cli.ok(&[
        "role",
        "add",
        "--project",
        "demo",
        "--user",
        "alice",
        "member",
    ]);
    let alice = cli.as_user("alice", "alice-pw", "demo");
    assert!(alice.run(&["compute", "service", "list"]).is_err());
    assert!(alice.run(&["hypervisor", "list"]).is_err());
    assert!(
        alice
            .run(&[
                "flavor", "create", "--ram", "1", "--disk", "0", "--vcpus", "1", "x"
            ])
            .is_err()
    );
    assert_eq!(
        column(&alice.json(&["flavor", "list"]), "Name"),
        ["m1.tiny"]
    );
    assert_eq!(
        column(&alice.json(&["security", "group", "list"]), "Name"),
        ["default"]
    );
    assert!(
        alice
            .json(&["server", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}
