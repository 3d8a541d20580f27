//! `mica up` end to end with the pinned `openstack` CLI as the client: key
//! pair and boot on the default network, console log, the guest answering
//! pings from its host, every power action checked on the host, quota,
//! project isolation (two projects' networks with one CIDR; a port pointed
//! at another project's server), deletes that leave nothing behind, and a
//! restart that keeps everything. On this machine (a software /dev/kvm) `mica up` runs
//! its compute host in the nested test host, as a user here would.

mod common;

use std::time::Duration;

use common::{Cli, Up, ip_of};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The VMM processes of an instance on the compute host (their pids).
fn vmm_pids(up: &Up, uuid: &str) -> Vec<u32> {
    let out = up.on_host(&format!(
        "ps -eo pid,args | grep '[m]ica-vmm --config /var/lib/mica/instances/{uuid}/' | awk '{{print $1}}'"
    ));
    out.stdout
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The CLI's answer to a 404 on a server.
fn not_found(e: &str) -> bool {
    e.contains("No Server found") || e.contains("No server with a name or ID")
}

/// Whether the guest at `ip` answers a ping from its compute host.
fn pings(up: &Up, ip: &str) -> bool {
    up.on_host(&format!("busybox ping -c 1 -W 2 {ip} >/dev/null"))
        .code
        == 0
}

fn wait_pings(up: &Up, ip: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while !pings(up, ip) {
        assert!(
            std::time::Instant::now() < deadline,
            "{ip} does not answer pings after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn banners(demo: &Cli, name: &str) -> usize {
    demo.ok(&["console", "log", "show", name])
        .matches("=== Mica tiny guest: hostname=")
        .count()
}

fn wait_banners(demo: &Cli, name: &str, n: usize, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while banners(demo, name) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: fewer than {n} boots in its console log after {timeout:?}:\n{}",
            demo.ok(&["console", "log", "show", name])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn nested_all_in_one_end_to_end() {
    if !common::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut up = Up::start(&state, &[]);
    eprintln!("mica up ready in {:?}", up.started_in);
    let admin = up.cli("mica");
    let demo = up.cli("mica-demo");
    let (host, _) = up.compute();

    // What the first start made.
    let flavors = admin.json(&["flavor", "list"]);
    for f in ["m1.nano", "m1.tiny", "m1.small"] {
        assert!(flavors.to_string().contains(f), "{flavors}");
    }
    assert_eq!(demo.json(&["image", "show", "tiny"])["status"], "active");
    assert!(demo.ok(&["network", "list"]).contains("shared"));
    assert!(
        demo.ok(&["security", "group", "list"]).contains("default"),
        "the demo project has its default security group"
    );

    // Pings allowed in (the default group lets in only its members).
    demo.allow_ping("default");

    // A key pair and a server on the default network.
    let key_file = dir.path().join("k1.pem");
    let pubkey = demo.json(&[
        "keypair",
        "create",
        "--private-key",
        key_file.to_str().unwrap(),
        "k1",
    ]);
    assert!(
        std::fs::read_to_string(&key_file)
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert_eq!(pubkey["name"], "k1");
    let created = demo.json(&[
        "server",
        "create",
        "--flavor",
        "m1.nano",
        "--image",
        "tiny",
        "--key-name",
        "k1",
        "--wait",
        "vm1",
    ]);
    assert_eq!(created["status"], "ACTIVE", "{created}");
    let uuid = created["id"].as_str().unwrap().to_owned();
    let ip = ip_of(&created);
    assert!(ip.starts_with("10.0.0."), "{created}");
    let shown = admin.server(&uuid);
    assert_eq!(shown["OS-EXT-SRV-ATTR:host"], host.as_str(), "{shown}");
    assert_eq!(shown["key_name"], "k1");
    wait_banners(&demo, "vm1", 1, SECS(60));
    let log = demo.ok(&["console", "log", "show", "vm1"]);
    assert!(log.contains("hostname=vm1"), "{log}");
    assert!(log.contains(&format!("ip={ip}")), "{log}");
    // What a user reads first: a healthy boot has no fatal line in it.
    assert!(
        !log.lines().any(|l| l.contains("Fatal")),
        "the console log of a healthy boot has a Fatal line:\n{log}"
    );
    wait_pings(&up, &ip, SECS(60));
    let first = vmm_pids(&up, &uuid);
    assert_eq!(first.len(), 1, "one VMM for vm1: {first:?}");

    // stop / start: the VMM goes and comes back.
    demo.ok(&["server", "stop", "vm1"]);
    demo.wait_status("vm1", "SHUTOFF", SECS(120));
    assert_eq!(
        admin.server(&uuid)["OS-EXT-STS:power_state"],
        4,
        "power state SHUTDOWN"
    );
    assert!(
        vmm_pids(&up, &uuid).is_empty(),
        "a VMM runs for a SHUTOFF server"
    );
    assert!(!pings(&up, &ip));
    demo.ok(&["server", "start", "vm1"]);
    demo.wait_status("vm1", "ACTIVE", SECS(120));
    assert_eq!(vmm_pids(&up, &uuid).len(), 1);
    wait_banners(&demo, "vm1", 2, SECS(60));
    wait_pings(&up, &ip, SECS(60));

    // A soft reboot: the guest boots again in the same VMM.
    let before = vmm_pids(&up, &uuid);
    demo.ok(&["server", "reboot", "--wait", "vm1"]);
    demo.wait_status("vm1", "ACTIVE", SECS(120));
    wait_banners(&demo, "vm1", 3, SECS(120));
    wait_pings(&up, &ip, SECS(60));
    assert_eq!(vmm_pids(&up, &uuid).len(), 1);
    // A hard reboot: a new VMM.
    demo.ok(&["server", "reboot", "--hard", "--wait", "vm1"]);
    demo.wait_status("vm1", "ACTIVE", SECS(120));
    wait_banners(&demo, "vm1", 4, SECS(120));
    let after = vmm_pids(&up, &uuid);
    assert_eq!(after.len(), 1);
    assert_ne!(before, after, "a hard reboot starts a new VMM");
    wait_pings(&up, &ip, SECS(60));

    // pause / unpause and suspend / resume: the guest stops answering and
    // answers again; the VMM stays.
    demo.ok(&["server", "pause", "vm1"]);
    demo.wait_status("vm1", "PAUSED", SECS(60));
    assert_eq!(
        admin.server(&uuid)["OS-EXT-STS:power_state"],
        3,
        "power state PAUSED"
    );
    assert!(!pings(&up, &ip), "a paused guest answered");
    assert_eq!(vmm_pids(&up, &uuid), after);
    demo.ok(&["server", "unpause", "vm1"]);
    demo.wait_status("vm1", "ACTIVE", SECS(60));
    wait_pings(&up, &ip, SECS(30));
    demo.ok(&["server", "suspend", "vm1"]);
    demo.wait_status("vm1", "SUSPENDED", SECS(60));
    assert!(!pings(&up, &ip), "a suspended guest answered");
    demo.ok(&["server", "resume", "vm1"]);
    demo.wait_status("vm1", "ACTIVE", SECS(60));
    wait_pings(&up, &ip, SECS(30));

    // Quota: instances=2 for demo; a third server is refused.
    admin.ok(&["quota", "set", "--instances", "2", "demo"]);
    demo.json(&[
        "server", "create", "--flavor", "m1.nano", "--image", "tiny", "--wait", "vm2",
    ]);
    let third = demo
        .run(&[
            "server", "create", "--flavor", "m1.nano", "--image", "tiny", "vm3",
        ])
        .expect_err("a third server over quota");
    assert!(
        third.contains("Quota exceeded for instances") && third.contains("403"),
        "{third}"
    );
    let limits = demo.json(&["limits", "show", "--absolute"]);
    let used = limits
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["Name"] == "total_instances_used")
        .unwrap_or_else(|| panic!("{limits}"));
    assert_eq!(used["Value"], 2, "{limits}");

    // Another project cannot see or touch demo's servers.
    admin.ok(&["project", "create", "--domain", "default", "other"]);
    admin.ok(&[
        "user",
        "create",
        "--domain",
        "default",
        "--project",
        "other",
        "--password",
        "other-pass",
        "other",
    ]);
    admin.ok(&[
        "role",
        "add",
        "--project",
        "other",
        "--user",
        "other",
        "member",
    ]);
    let auth_url = admin.json(&[
        "endpoint",
        "list",
        "--service",
        "identity",
        "--interface",
        "public",
    ]);
    let auth_url = auth_url[0]["URL"].as_str().unwrap().to_owned();
    let other = Cli::as_user(&auth_url, "other", "other-pass", "other");
    let e = other.run(&["server", "show", &uuid]).expect_err("404");
    assert!(not_found(&e), "{e}");
    let e = other.run(&["server", "stop", &uuid]).expect_err("404");
    assert!(not_found(&e), "{e}");
    assert!(!other.ok(&["server", "list"]).contains("vm1"));
    assert_eq!(demo.server("vm1")["status"], "ACTIVE");

    isolated_networks_with_one_cidr(&up, &admin, &demo, &other, &uuid, dir.path());

    // A restart of mica up keeps everything; the running servers were
    // stopped by Ctrl-C and start again.
    let vm2 = demo.server("vm2")["id"].as_str().unwrap().to_owned();
    assert!(
        up.interrupt(SECS(180)),
        "mica up did not stop cleanly:\n{}",
        up.log_tail(40)
    );
    let mut up = Up::start(&state, &[]);
    let demo = up.cli("mica-demo");
    let admin = up.cli("mica");
    assert_eq!(demo.server("vm1")["status"], "SHUTOFF");
    assert_eq!(demo.server("vm2")["status"], "SHUTOFF");
    demo.ok(&["server", "start", "vm1"]);
    demo.wait_status("vm1", "ACTIVE", SECS(120));
    wait_banners(&demo, "vm1", 5, SECS(120));
    wait_pings(&up, &ip, SECS(60));

    // Deletes leave no VMM, tap, disk or allocation behind.
    let ports = admin.json(&["port", "list", "--server", &uuid]);
    let port = ports[0]["ID"].as_str().unwrap().to_owned();
    let tap = format!("tap{}", &port[..11]);
    assert!(
        up.on_host(&format!("ip link show {tap}")).code == 0,
        "no {tap}"
    );
    demo.ok(&["server", "delete", "--wait", "vm1", "vm2"]);
    for id in [&uuid, &vm2] {
        assert!(vmm_pids(&up, id).is_empty(), "a VMM of {id} is left");
        let disk = up.on_host(&format!("test -e /var/lib/mica/instances/{id}"));
        assert_ne!(disk.code, 0, "the folder of {id} is left");
    }
    assert_ne!(
        up.on_host(&format!("ip link show {tap}")).code,
        0,
        "{tap} is left"
    );
    let token = admin.ok(&["token", "issue", "-f", "value", "-c", "id"]);
    for id in [&uuid, &vm2] {
        let out = std::process::Command::new("curl")
            .args(["-s", "-H"])
            .arg(format!("X-Auth-Token: {}", token.trim()))
            .arg(format!("http://127.0.0.1:8778/allocations/{id}"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            v["allocations"],
            serde_json::json!({}),
            "allocation of {id} left: {v}"
        );
    }
    assert!(
        demo.ok(&["server", "list", "-f", "value"])
            .trim()
            .is_empty()
    );
    assert!(
        up.interrupt(SECS(120)),
        "mica up did not stop cleanly:\n{}",
        up.log_tail(40)
    );
}

/// What a guest of [`isolated_networks_with_one_cidr`] runs once booted:
/// its gateway, the other project's guest (same CIDR, other network) and the
/// host's address on the shared network, each reported on the console; then
/// its own metadata (through its network namespace's proxy).
const ISOLATION_PROBE: &str = "me=$(ip -o -4 addr show dev eth0|awk '{print $4}')
p=192.168.1.10;[ \"${me%/*}\" = $p ] && p=192.168.1.60
for i in $(seq 30);do ping -c1 -W1 192.168.1.1 >/dev/null&&{ echo ISO-GW-OK;break;};sleep 1;done
ping -c2 -W1 $p >/dev/null&&echo ISO-PEER-SEEN||echo ISO-PEER-UNSEEN
ping -c2 -W1 10.0.0.1 >/dev/null&&echo ISO-HOST-SEEN||echo ISO-HOST-UNSEEN
wget -q -O - http://169.254.169.254/openstack/latest/meta_data.json;echo
wget -q -O - http://169.254.169.254/latest/meta-data/public-keys/0/openssh-key;echo
echo ISO-DONE
";

/// The compute host's routes, rules and IPv4 addresses (lifetimes left
/// out): what a project's network must never change.
fn host_routing(up: &Up) -> String {
    let out = up.on_host(
        "{ ip -4 route show table all; ip -6 route show table all; ip -4 rule; ip -6 rule; ip -4 -o addr; } \
         | sed -E 's/ (expires|valid_lft|preferred_lft) [^ ]+//g'",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
}

/// Issue 15's two holes, end to end: two projects create the same CIDR,
/// each boots a server on it, each guest gets its address by DHCP and
/// reaches its own gateway but neither the other guest nor the host, and
/// the compute host's routing is what it was; and a port another project
/// (or an admin) points at demo's server by `device_id` never reaches that
/// server's guest.
fn isolated_networks_with_one_cidr(
    up: &Up,
    admin: &Cli,
    demo: &Cli,
    other: &Cli,
    vm1: &str,
    dir: &std::path::Path,
) {
    use base64::Engine as _;
    let before = host_routing(up);
    admin.ok(&["quota", "set", "--instances", "3", "demo"]);

    // One probe image for both (the tiny image with the probe on its
    // command line).
    let tiny = admin.json(&["image", "show", "tiny"]);
    let file = dir.join("tiny.img");
    admin.ok(&["image", "save", "--file", file.to_str().unwrap(), "tiny"]);
    let script = base64::engine::general_purpose::STANDARD.encode(ISOLATION_PROBE);
    admin.ok(&[
        "image",
        "create",
        "--public",
        "--disk-format",
        tiny["disk_format"].as_str().unwrap(),
        "--container-format",
        "bare",
        "--file",
        file.to_str().unwrap(),
        "--property",
        &format!("os_command_line=console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet mica.run={script}"),
        "probe",
    ]);

    let mut nets = Vec::new();
    for (cli, name, ip) in [
        (demo, "blue", "192.168.1.10"),
        (other, "green", "192.168.1.60"),
    ] {
        let net = cli.json(&["network", "create", name]);
        cli.ok(&[
            "subnet",
            "create",
            "--network",
            name,
            "--subnet-range",
            "192.168.1.0/24",
            &format!("{name}-v4"),
        ]);
        if name == "green" {
            cli.allow_ping("default");
        }
        let nic = format!("net-id={},v4-fixed-ip={ip}", net["id"].as_str().unwrap());
        let mut args = vec![
            "server",
            "create",
            "--flavor",
            "m1.nano",
            "--image",
            "probe",
            "--nic",
            &nic,
            "--property",
            "role=web",
            "--wait",
        ];
        if name == "blue" {
            args.extend(["--key-name", "k1"]);
        }
        args.push(name);
        let server = cli.json(&args);
        assert_eq!(server["status"], "ACTIVE", "{server}");
        let id = server["id"].as_str().unwrap().to_owned();
        nets.push((cli, name, ip, net["id"].as_str().unwrap().to_owned(), id));
    }
    let key = demo.ok(&["keypair", "show", "--public-key", "k1"]);
    for (cli, name, ip, _, id) in &nets {
        let deadline = std::time::Instant::now() + SECS(180);
        let log = loop {
            let log = cli.ok(&["console", "log", "show", name]);
            if log.contains("ISO-DONE") {
                break log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no probe result after 180 s:\n{log}"
            );
            std::thread::sleep(SECS(1));
        };
        // DHCP from its own network's server, its own gateway, nothing else.
        assert!(log.contains(&format!("ip={ip}/24 ")), "{name}:\n{log}");
        assert!(log.contains("ISO-GW-OK"), "{name}:\n{log}");
        assert!(log.contains("ISO-PEER-UNSEEN"), "{name}:\n{log}");
        assert!(log.contains("ISO-HOST-UNSEEN"), "{name}:\n{log}");
        // Its own metadata, nobody else's.
        assert!(
            log.contains(&format!("\"uuid\":\"{id}\"")),
            "{name}:\n{log}"
        );
        assert!(
            log.contains(&format!("\"name\":\"{name}\"")),
            "{name}:\n{log}"
        );
        assert!(
            log.contains("\"meta\":{\"role\":\"web\"}"),
            "{name}:\n{log}"
        );
        let other = &nets.iter().find(|n| n.1 != *name).unwrap().4;
        assert!(!log.contains(other.as_str()), "{name} saw {other}:\n{log}");
        assert_eq!(
            log.contains(key.trim()),
            *name == "blue",
            "{name}: the EC2 openssh-key is its key pair's:\n{log}"
        );
    }
    // The metadata service refuses whoever is not a signing proxy.
    let blue_id = &nets[0].4;
    // (No signature: 400; a wrong one: 403.)
    for (signature, code) in [(None, "400"), (Some("0000"), "403")] {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("X-Instance-ID: {blue_id}"))
            .args(["-H", "X-Tenant-ID: x"]);
        if let Some(s) = signature {
            curl.args(["-H", &format!("X-Instance-ID-Signature: {s}")]);
        }
        let out = curl
            .arg("http://127.0.0.1:8775/openstack/latest/meta_data.json")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            code,
            "a request with signature {signature:?}"
        );
    }
    // From each network's namespace: its own guest answers, the other's
    // does not; the host itself reaches neither.
    for (_, name, ip, net, _) in &nets {
        let peer = if *ip == "192.168.1.10" {
            "192.168.1.60"
        } else {
            "192.168.1.10"
        };
        let ns = format!("mica-net-{net}");
        let own = up.on_host(&format!("ip netns exec {ns} busybox ping -c 2 -W 2 {ip}"));
        assert_eq!(
            own.code, 0,
            "{name}'s namespace does not reach its guest: {own:?}"
        );
        let cross = up.on_host(&format!("ip netns exec {ns} busybox ping -c 2 -W 1 {peer}"));
        assert_ne!(
            cross.code, 0,
            "{name}'s namespace reaches {peer}: {cross:?}"
        );
        assert!(!pings(up, ip), "the host reaches {name}'s guest at {ip}");
    }
    assert_eq!(
        host_routing(up),
        before,
        "two projects' networks changed the compute host's routing"
    );

    // A port of another project pointed at vm1 is refused; one an admin
    // points there is not a binding: after a hard reboot (the ports built
    // again) vm1 still has only its own network.
    let green = &nets[1].3;
    let e = other
        .run(&[
            "port",
            "create",
            "--network",
            green,
            "--device",
            vm1,
            "--device-owner",
            "compute:nova",
            "injected",
        ])
        .expect_err("another project's port pointed at vm1");
    assert!(
        e.contains("403") || e.contains("disallowed by policy"),
        "{e}"
    );
    admin.ok(&[
        "port",
        "create",
        "--network",
        green,
        "--device",
        vm1,
        "--device-owner",
        "compute:nova",
        "admin-injected",
    ]);
    let boots = banners(demo, "vm1");
    demo.ok(&["server", "reboot", "--hard", "--wait", "vm1"]);
    wait_banners(demo, "vm1", boots + 1, SECS(120));
    let addresses = demo.server("vm1")["addresses"].clone();
    assert!(!addresses.to_string().contains("green"), "{addresses}");
    let log = demo.ok(&["console", "log", "show", "vm1"]);
    let last = log
        .lines()
        .rfind(|l| l.contains("=== Mica tiny guest: hostname="))
        .unwrap();
    assert!(
        !last.contains("192.168.1."),
        "vm1's guest has green's address: {last}"
    );
    admin.ok(&["port", "delete", "admin-injected"]);

    // Gone with their servers: namespaces, bridges, DHCP servers.
    demo.ok(&["server", "delete", "--wait", "blue"]);
    other.ok(&["server", "delete", "--wait", "green"]);
    let left = up.on_host("ls /run/netns; ls /sys/class/net | grep -c '^gwb' || true");
    assert_eq!(
        left.stdout.trim(),
        "0",
        "isolated networks left on the host: {left:?}"
    );
    admin.ok(&["image", "delete", "probe"]);
    admin.ok(&["quota", "set", "--instances", "2", "demo"]);
}
