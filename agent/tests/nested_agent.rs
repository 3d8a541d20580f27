//! The real `mica-agent` as a compute host inside the nested test host (L1):
//! builds over RPC boot real Linux guests from images served by
//! mica-controller's image API, with real bridges, taps, dnsmasq and
//! nftables. This process plays the conductor (over RabbitMQ).

mod common;

use std::time::Duration;

use common::nested::{
    GATEWAY, HOST, NOTHING_LEFT, NestedCompute, RUN_DIR, STATE_DIR, base64, default_group, icmp_in,
    instance, port, rule, tail,
};
use mica_rpc::compute::{Action, Direction, PortSecurityRequest, PowerState};
use mica_rpc::conductor::ActionFinished;

const MIN: Duration = Duration::from_secs(60);

fn action(n: &NestedCompute, uuid: &str, a: Action) -> ActionFinished {
    let id = mica_agent::testing::new_uuid();
    n.rt.block_on(async {
        n.conductor.power(HOST, uuid, &id, a).await.unwrap();
        n.conductor.wait_action(&id, 3 * MIN).await
    })
    .unwrap_or_else(|| panic!("no action report\n{}", tail(&n.agent_log(), 80)))
}

fn terminate(n: &NestedCompute, uuid: &str) {
    let t = n.rt.block_on(async {
        n.conductor.terminate(HOST, uuid, 0).await.unwrap();
        n.conductor.wait_terminated(uuid, MIN).await
    });
    assert_eq!(t.expect("a terminate report").result, Ok(()));
}

#[test]
fn nested_a_build_boots_a_real_guest_that_gets_its_ip_by_dhcp_and_answers_ping() {
    let Some(n) = NestedCompute::boot("agent-build", 2048, "") else {
        return;
    };
    n.start_agent();
    let addr = "10.20.0.10";
    let mut spec = instance(
        &n.tiny,
        "web-1",
        port(10, vec![default_group(&[addr.into()], vec![icmp_in()])]),
    );
    spec.flavor.ephemeral_gb = 1;
    spec.flavor.swap_mb = 64;
    let (vmm, report) = n.build(&spec, 3 * MIN);
    let running = report.result.unwrap_or_else(|f| {
        panic!(
            "build failed: {} / {}\n{}",
            f.message,
            f.details,
            n.agent_log()
        )
    });
    assert_eq!(running.power_state, PowerState::Running);
    eprintln!(
        "RPC build received -> VMM running (cold image cache): {} ms",
        running.took_ms
    );

    // The guest configured eth0 by DHCP (udhcpc) with the port's address,
    // and named itself.
    let console = n.wait_console(&spec.uuid, "=== Mica tiny guest:", 3 * MIN);
    let banner = console
        .lines()
        .find(|l| l.starts_with("=== Mica tiny guest:"))
        .unwrap();
    let ip = format!("ip={addr}/24");
    let words: Vec<&str> = banner.split_whitespace().collect();
    assert_eq!(
        words,
        [
            "===",
            "Mica",
            "tiny",
            "guest:",
            "hostname=web-1",
            &ip,
            "cpus=1",
            "==="
        ],
        "{console}"
    );
    // The host reaches the guest.
    let out = n.sh(&format!("busybox ping -c 3 -W 5 {addr}"));
    assert!(out.contains("3 packets received"), "{out}");

    // What the agent made, in L1: the bridge with the gateway address, the
    // tap on it, dnsmasq serving the port, the port's firewall, the VMM.
    let bridge = "brq7e1d0c2a-5b";
    let tap = format!("tap{}", &spec.ports[0].id[..11]);
    let out = n.sh(&format!(
        "ip -o -4 addr show dev {bridge}; \
         cat /sys/class/net/{tap}/master/uevent | grep INTERFACE; \
         cat {STATE_DIR}/networks/{net}/hosts; \
         pgrep -a dnsmasq; \
         nft list table bridge mica_{tapt}; \
         ls {RUN_DIR}/vmm",
        net = common::nested::NET_ID,
        tapt = tap.replace('-', "_"),
    ));
    assert!(out.contains(&format!("inet {GATEWAY}/24")), "{out}");
    assert!(out.contains(&format!("INTERFACE={bridge}")), "{out}");
    assert!(
        out.contains(&format!("fa:16:3e:00:14:0a,{addr},web-1")),
        "{out}"
    );
    assert!(out.contains("dnsmasq --conf-file="), "{out}");
    assert!(
        out.contains("ether saddr != fa:16:3e:00:14:0a drop"),
        "{out}"
    );
    assert!(out.contains(&format!("{vmm}.sock")), "{out}");
    // The flavor's disks: root (the image, grown to 1 GB), an ext4
    // ephemeral disk and a swap disk, all given to the VMM.
    let dir = format!("{STATE_DIR}/instances/{}", spec.uuid);
    let out = n.sh(&format!(
        "stat -c '%n %s' {dir}/root.raw {dir}/ephemeral.raw {dir}/swap.raw; \
         blkid {dir}/ephemeral.raw {dir}/swap.raw; cat {dir}/vm.json"
    ));
    assert!(out.contains(&format!("{dir}/root.raw 1073741824")), "{out}");
    assert!(
        out.contains(&format!("{dir}/ephemeral.raw 1073741824")),
        "{out}"
    );
    assert!(out.contains(&format!("{dir}/swap.raw 67108864")), "{out}");
    assert!(
        out.contains("LABEL=\"ephemeral0\"") && out.contains("TYPE=\"ext4\""),
        "{out}"
    );
    assert!(out.contains("TYPE=\"swap\""), "{out}");
    let vm: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let ids: Vec<&str> = vm["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["root", "ephemeral0", "swap"]);
    assert!(
        vm["cmdline"]
            .as_str()
            .unwrap()
            .ends_with("noxsave mica.hostname=web-1"),
        "{vm}"
    );

    // DHCP really happened (dnsmasq's lease and log).
    let out = n.sh(&format!(
        "cat {STATE_DIR}/networks/{}/leases; grep -c DHCPACK {STATE_DIR}/networks/{}/dnsmasq.log",
        common::nested::NET_ID,
        common::nested::NET_ID
    ));
    assert!(out.contains(addr), "{out}");

    // Delete: nothing of it is left in L1 (it was the network's only port,
    // so the bridge and dnsmasq go too).
    terminate(&n, &spec.uuid);
    assert_eq!(n.leftovers(), NOTHING_LEFT);
    n.stop_agent("TERM");
}

#[test]
fn nested_a_restarted_agent_keeps_three_guests_running_and_adopts_them() {
    let Some(n) = NestedCompute::boot("agent-restart", 3072, "") else {
        return;
    };
    n.start_agent();
    let mut vms = Vec::new();
    for i in 0..3u8 {
        let addr = format!("10.20.0.{}", 20 + i);
        let spec = instance(
            &n.tiny,
            &format!("vm-{i}"),
            port(
                20 + i,
                vec![default_group(std::slice::from_ref(&addr), vec![icmp_in()])],
            ),
        );
        let (vmm, report) = n.build(&spec, 3 * MIN);
        report.result.expect("built");
        vms.push((spec, vmm, addr));
    }
    for (spec, _, addr) in &vms {
        n.wait_console(&spec.uuid, &format!("ip={addr}/24"), 3 * MIN);
    }
    let before: Vec<serde_json::Value> = vms
        .iter()
        .map(|(_, vmm, _)| n.vm_info(vmm).expect("GET /vm"))
        .collect();

    // The agent dies (SIGKILL: no chance to tidy up) and comes back.
    n.stop_agent("KILL");
    std::thread::sleep(Duration::from_secs(1));
    n.start_agent();
    for ((_, vmm, addr), b) in vms.iter().zip(&before) {
        let now = n.vm_info(vmm).expect("the VMM still answers");
        assert_eq!(now["pid"], b["pid"], "the same VMM process");
        assert!(
            now["uptime_ms"].as_u64().unwrap() > b["uptime_ms"].as_u64().unwrap() + 1000,
            "its uptime goes on: {} then {}",
            b["uptime_ms"],
            now["uptime_ms"]
        );
        let out = n.sh(&format!("busybox ping -c 1 -W 5 {addr}"));
        assert!(out.contains("1 packets received"), "{out}");
    }
    let log = n.agent_log();
    assert_eq!(
        log.matches("adopted a running mica-vmm").count(),
        3,
        "{}",
        tail(&log, 40)
    );

    // An action after the restart works: stop one.
    let done = action(
        &n,
        &vms[0].0.uuid,
        Action::Stop {
            shutdown_timeout_s: 30,
        },
    );
    assert_eq!(done.result, Ok(PowerState::Shutdown));
    assert!(n.vm_info(&vms[0].1).is_none());
    let pid = before[0]["pid"].as_u64().unwrap();
    let (code, _) = n.try_sh(&format!("kill -0 {pid}"));
    assert_ne!(code, 0, "the stopped VMM's process is gone");
    // The guest shut down cleanly through ACPI (not at the timeout).
    let console = n.console(&vms[0].0.uuid);
    assert!(
        console.contains("=== Mica tiny guest: shutting down ==="),
        "{console}"
    );
    // The other two still run; no power-state report for any of them.
    for (_, vmm, _) in &vms[1..] {
        assert!(n.vm_info(vmm).is_some());
    }
    assert!(
        !n.conductor
            .reports()
            .iter()
            .any(|r| matches!(r, mica_agent::testing::Report::PowerState(_)))
    );
    for (spec, _, _) in &vms {
        terminate(&n, &spec.uuid);
    }
    assert_eq!(n.leftovers(), NOTHING_LEFT);
}

#[test]
fn nested_a_killed_vmm_is_reported_shutoff_within_the_sync_interval() {
    let Some(n) = NestedCompute::boot("agent-kill", 2048, "") else {
        return;
    };
    n.start_agent();
    let spec = instance(
        &n.tiny,
        "victim",
        port(30, vec![default_group(&[], vec![])]),
    );
    let (vmm, report) = n.build(&spec, 3 * MIN);
    report.result.expect("built");
    n.wait_console(&spec.uuid, "=== Mica tiny guest:", 3 * MIN);
    let pid = n.vm_info(&vmm).unwrap()["pid"].as_u64().unwrap();
    let killed = std::time::Instant::now();
    n.sh(&format!("kill -9 {pid}"));
    // The configured sync interval is 5 s.
    let change =
        n.rt.block_on(n.conductor.wait_for(Duration::from_secs(5), |r| match r {
            mica_agent::testing::Report::PowerState(c) if c.instance_uuid == spec.uuid => {
                Some(c.clone())
            }
            _ => None,
        }))
        .unwrap_or_else(|| panic!("not reported within 5 s\n{}", tail(&n.agent_log(), 40)));
    eprintln!("kill -9 -> reported SHUTOFF in {:?}", killed.elapsed());
    assert_eq!(change.power_state, PowerState::Shutdown);
    assert_eq!(change.vmm_id, None);
    assert_eq!(
        n.conductor.instance(&spec.uuid).unwrap().vm_state,
        "stopped"
    );
    // Not restarted behind the user's back.
    std::thread::sleep(Duration::from_secs(6));
    assert!(n.vm_info(&vmm).is_none());
    let (code, _) = n.try_sh("pgrep -f '^[^ ]*mica-vmm '");
    assert_ne!(code, 0, "no VMM runs");
    terminate(&n, &spec.uuid);
    assert_eq!(n.leftovers(), NOTHING_LEFT);
}

#[test]
fn nested_security_groups_follow_novas_default_and_rules_apply_at_runtime() {
    // The guest runs a listener on port 22 (busybox httpd), checks it can
    // reach the host, the outside through NAT, and that a spoofed source
    // address gets nowhere.
    let Some(mut n) = NestedCompute::boot("agent-sg", 2048, "") else {
        return;
    };
    // The image API (on this machine) is "the outside": the guest reaches it
    // only through the host's NAT.
    let guest = format!(
        "httpd -p 22 -h /etc\n\
         for i in $(seq 1 60); do ping -c 1 -W 1 {GATEWAY} >/dev/null 2>&1 && {{ echo GUEST-REACHES-HOST; break; }}; sleep 1; done\n\
         echo NAT-ANSWER: $(printf 'GET /versions HTTP/1.0\\r\\n\\r\\n' | nc -w 10 10.0.2.100 {port} | head -n 1)\n\
         ip addr add 10.20.0.99/24 dev eth0\n\
         if ping -c 2 -W 2 -I 10.20.0.99 {GATEWAY} >/dev/null 2>&1; then echo SPOOF-PASSED; else echo SPOOF-BLOCKED; fi\n\
         ip addr del 10.20.0.99/24 dev eth0\n",
        port = n.api.port()
    );
    n.tiny.properties.insert(
        "os_command_line".into(),
        serde_json::Value::String(format!(
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet mica.run={}",
            base64(&guest)
        )),
    );
    n.start_agent();
    let addr = "10.20.0.40";
    let spec = instance(
        &n.tiny,
        "guarded",
        port(40, vec![default_group(&[addr.into()], vec![])]),
    );
    let (_, report) = n.build(&spec, 3 * MIN);
    report.result.expect("built");
    let console = n.wait_console(&spec.uuid, "SPOOF-", 3 * MIN);
    // Egress is open (default group): the guest reaches the host, and the
    // outside (the image API on this machine) through the host's NAT.
    assert!(console.contains("GUEST-REACHES-HOST"), "{console}");
    assert!(
        console
            .lines()
            .map(str::trim_end)
            .any(|l| l.starts_with("NAT-ANSWER: HTTP/1.") && l.ends_with(" 200 OK")),
        "{console}"
    );
    // Anti-spoofing: another source address gets nowhere.
    assert!(console.contains("SPOOF-BLOCKED"), "{console}");

    // Ingress: the host is not in the group, so port 22 is closed to it.
    let probe = format!("curl -s -m 3 http://{addr}:22/hostname");
    let (code, out) = n.try_sh(&probe);
    assert_ne!(code, 0, "port 22 must be closed: {out}");

    // `openstack security group rule create --protocol tcp --dst-port 22 default`
    let with_ssh = default_group(
        &[addr.into()],
        vec![rule(
            Direction::Ingress,
            Some("tcp"),
            Some((22, 22)),
            Some("0.0.0.0/0"),
            None,
        )],
    );
    let apply = |groups| {
        n.rt.block_on(n.rpc.cast_method::<mica_rpc::compute::ApplyPortSecurity>(
            mica_rpc::Topic::compute(HOST),
            &PortSecurityRequest {
                instance_uuid: spec.uuid.clone(),
                port_id: spec.ports[0].id.clone(),
                security_groups: groups,
            },
        ))
        .unwrap();
    };
    let applied = std::time::Instant::now();
    apply(vec![with_ssh]);
    let out = poll(&n, &probe, true, Duration::from_secs(10));
    assert!(
        out.contains("web-") || out.contains("mica-tiny") || out.contains("guarded"),
        "{out}"
    );
    eprintln!("rule added -> port 22 open in {:?}", applied.elapsed());
    // Other ports stay closed (ICMP too).
    let (code, _) = n.try_sh(&format!("busybox ping -c 1 -W 2 {addr}"));
    assert_ne!(code, 0, "ICMP is not allowed");

    // Removing the rule closes it again.
    apply(vec![default_group(&[addr.into()], vec![])]);
    poll(&n, &probe, false, Duration::from_secs(10));
    terminate(&n, &spec.uuid);
    assert_eq!(n.leftovers(), NOTHING_LEFT);
}

/// Runs `probe` in L1 until it succeeds (`want`) or fails (`!want`).
fn poll(n: &NestedCompute, probe: &str, want: bool, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (code, out) = n.try_sh(probe);
        if (code == 0) == want {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{probe}: still {} after {timeout:?}: {out}",
            if want { "failing" } else { "passing" }
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn nested_a_build_that_fails_halfway_leaves_nothing_behind() {
    let Some(n) = NestedCompute::boot("agent-fail", 2048, "") else {
        return;
    };
    n.start_agent();
    // Tap creation fails: an interface that is not a tap already has the
    // port's tap name (made here, so the agent must neither use nor remove it).
    let p = port(50, vec![default_group(&[], vec![])]);
    let tap = format!("tap{}", &p.id[..11]);
    n.sh(&format!("ip link add {tap} type dummy"));
    let spec = instance(&n.tiny, "doomed", p);
    let (_, report) = n.build(&spec, 3 * MIN);
    let f = report.result.expect_err("the build fails");
    assert!(
        f.message.contains("Plugging the instance's network failed"),
        "{}",
        f.message
    );
    assert!(f.details.contains("is not a tap device"), "{}", f.details);
    assert!(f.retryable);
    // The image had been downloaded and the disk made, the bridge and
    // dnsmasq started: all undone (the cached image stays).
    assert_eq!(n.leftovers(), NOTHING_LEFT);
    let out = n.sh(&format!("ip -o link show {tap}; ls {STATE_DIR}/images"));
    assert!(out.contains("dummy") || out.contains(&tap), "{out}");
    assert!(out.contains(&format!("{}.raw", n.tiny.id)), "{out}");
    n.sh(&format!("ip link del {tap}"));

    // A checksum that does not match.
    let mut bad = n.tiny.clone();
    bad.os_hash_value = Some("ab".repeat(64));
    bad.id =
        n.rt.block_on(
            n.api.upload(
                "bad",
                "raw",
                std::fs::read(
                    mica_tests::artifacts::GuestImages::locate()
                        .unwrap()
                        .tiny_ext4(),
                )
                .unwrap(),
                &format!(
                    "http://{}:{}",
                    mica_tests::nested::HOST_FROM_L1,
                    n.api.port()
                ),
            ),
        )
        .id;
    bad.download_url = bad.download_url.replace(&n.tiny.id, &bad.id);
    let spec = instance(&bad, "doomed-2", port(51, vec![default_group(&[], vec![])]));
    let (_, report) = n.build(&spec, 3 * MIN);
    let f = report.result.expect_err("the build fails");
    assert!(f.message.contains("failed verification"), "{}", f.message);
    assert_eq!(n.leftovers(), NOTHING_LEFT);
    let out = n.sh(&format!(
        "ls -A {STATE_DIR}/images {STATE_DIR}/images/.partial"
    ));
    assert!(
        !out.contains(&bad.id),
        "nothing of the bad image is kept: {out}"
    );
}

#[test]
fn nested_a_full_disk_or_a_missing_image_give_clear_faults() {
    let Some(n) = NestedCompute::boot("agent-disk", 2048, "") else {
        return;
    };
    // The agent's state on a 32 MB file system: the 64 MB image cannot fit.
    n.sh(&format!(
        "mkdir -p {STATE_DIR} && mount -t tmpfs -o size=32m tmpfs {STATE_DIR}"
    ));
    n.start_agent();
    let spec = instance(&n.tiny, "big", port(60, vec![default_group(&[], vec![])]));
    let (_, report) = n.build(&spec, 3 * MIN);
    let f = report.result.expect_err("no room");
    assert_eq!(
        f.message,
        format!("Not enough disk space on host {HOST} for the instance's image")
    );
    assert!(f.details.contains("bytes needed"), "{}", f.details);
    assert!(f.retryable, "another host may have room");
    assert_eq!(n.leftovers(), NOTHING_LEFT);

    // 80 MB: the image fits in the cache, but not a second copy of it for
    // the root disk.
    n.stop_agent("TERM");
    n.sh(&format!(
        "umount {STATE_DIR} && mount -t tmpfs -o size=80m tmpfs {STATE_DIR}"
    ));
    n.start_agent();
    let spec = instance(&n.tiny, "big-2", port(62, vec![default_group(&[], vec![])]));
    let (_, report) = n.build(&spec, 3 * MIN);
    let f = report.result.expect_err("no room for the disk");
    assert_eq!(
        f.message,
        format!("Not enough disk space on host {HOST} for the instance's disks")
    );
    assert!(f.retryable);
    assert_eq!(n.leftovers(), NOTHING_LEFT);

    // An image deleted from the image API (on a host with room again).
    n.stop_agent("TERM");
    n.sh(&format!("umount {STATE_DIR}"));
    n.start_agent();
    n.rt.block_on(n.api.delete(&n.tiny.id));
    let spec = instance(&n.tiny, "ghost", port(61, vec![default_group(&[], vec![])]));
    let (_, report) = n.build(&spec, 3 * MIN);
    let f = report.result.expect_err("no image");
    assert_eq!(
        f.message,
        format!("Image {} could not be found.", n.tiny.id)
    );
    assert!(!f.retryable);
    assert_eq!(n.leftovers(), NOTHING_LEFT);
}

#[test]
fn nested_power_actions_on_a_real_guest() {
    // The guest reboots itself once (the root disk keeps a marker), then
    // stays up.
    let guest = "if [ ! -e /rebooted ]; then touch /rebooted; sync; echo GUEST-REBOOTING; reboot -f; fi; echo GUEST-SETTLED";
    let Some(mut n) = NestedCompute::boot("agent-power", 2048, "") else {
        return;
    };
    n.tiny.properties.insert(
        "os_command_line".into(),
        serde_json::Value::String(format!(
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet mica.run={}",
            base64(guest)
        )),
    );
    n.start_agent();
    let spec = instance(
        &n.tiny,
        "cycler",
        port(70, vec![default_group(&[], vec![])]),
    );
    let (vmm, report) = n.build(&spec, 3 * MIN);
    report.result.expect("built");
    // The guest's own reboot: the VMM exits (guest reset) and the agent
    // boots it again with the same VMM id; the instance stays ACTIVE.
    let console = n.wait_console(&spec.uuid, "GUEST-SETTLED", 3 * MIN);
    assert!(console.contains("GUEST-REBOOTING"), "{console}");
    assert!(n.vm_info(&vmm).is_some());
    assert!(
        !n.conductor
            .reports()
            .iter()
            .any(|r| matches!(r, mica_agent::testing::Report::PowerState(_)))
    );

    // Pause / unpause, suspend / resume: the VMM's state follows.
    assert_eq!(
        action(&n, &spec.uuid, Action::Pause).result,
        Ok(PowerState::Paused)
    );
    assert_eq!(n.vm_info(&vmm).unwrap()["state"], "paused");
    assert_eq!(
        action(&n, &spec.uuid, Action::Unpause).result,
        Ok(PowerState::Running)
    );
    assert_eq!(
        action(&n, &spec.uuid, Action::Suspend).result,
        Ok(PowerState::Suspended)
    );
    assert_eq!(n.vm_info(&vmm).unwrap()["state"], "paused");
    assert_eq!(
        action(&n, &spec.uuid, Action::Resume).result,
        Ok(PowerState::Running)
    );
    assert_eq!(n.vm_info(&vmm).unwrap()["state"], "running");

    // Stop: the ACPI power button, the guest powers itself off (well before
    // the timeout).
    let t = std::time::Instant::now();
    assert_eq!(
        action(
            &n,
            &spec.uuid,
            Action::Stop {
                shutdown_timeout_s: 60
            }
        )
        .result,
        Ok(PowerState::Shutdown)
    );
    assert!(
        t.elapsed() < Duration::from_secs(50),
        "a clean shutdown, not the timeout: {:?}\n{}",
        t.elapsed(),
        n.console(&spec.uuid)
    );
    assert!(
        n.console(&spec.uuid)
            .contains("=== Mica tiny guest: shutting down ===")
    );
    assert!(n.vm_info(&vmm).is_none());

    // Start, with a new VMM.
    let settled = n.console(&spec.uuid).matches("GUEST-SETTLED").count();
    let vmm2 = mica_agent::testing::new_uuid();
    let done = action(
        &n,
        &spec.uuid,
        Action::Start {
            vmm_id: vmm2.clone(),
        },
    );
    assert_eq!(done.result, Ok(PowerState::Running));
    assert_eq!(done.vmm_id.as_deref(), Some(vmm2.as_str()));
    wait_count(&n, &spec.uuid, "GUEST-SETTLED", settled + 1);

    // Soft reboot: Ctrl-Alt-Del, the guest reboots in the same VMM (its boot
    // count goes up).
    let boots = n.vm_info(&vmm2).unwrap()["boots"].as_u64().unwrap();
    let done = action(
        &n,
        &spec.uuid,
        Action::Reboot {
            hard: false,
            vmm_id: mica_agent::testing::new_uuid(),
            shutdown_timeout_s: 60,
        },
    );
    assert_eq!(done.result, Ok(PowerState::Running));
    assert_eq!(
        done.vmm_id.as_deref(),
        Some(vmm2.as_str()),
        "a soft reboot keeps the VMM"
    );
    assert!(n.vm_info(&vmm2).unwrap()["boots"].as_u64().unwrap() > boots);
    wait_count(&n, &spec.uuid, "GUEST-SETTLED", settled + 2);

    // Hard reboot: a new VMM again.
    let vmm3 = mica_agent::testing::new_uuid();
    let done = action(
        &n,
        &spec.uuid,
        Action::Reboot {
            hard: true,
            vmm_id: vmm3.clone(),
            shutdown_timeout_s: 0,
        },
    );
    assert_eq!(done.result, Ok(PowerState::Running));
    assert!(n.vm_info(&vmm2).is_none());
    assert!(n.vm_info(&vmm3).is_some());
    wait_count(&n, &spec.uuid, "GUEST-SETTLED", settled + 3);
    terminate(&n, &spec.uuid);
    assert_eq!(n.leftovers(), NOTHING_LEFT);
}

/// Waits until `needle` shows `count` times on the console.
fn wait_count(n: &NestedCompute, uuid: &str, needle: &str, count: usize) {
    let deadline = std::time::Instant::now() + 3 * MIN;
    loop {
        let c = n.console(uuid);
        if c.matches(needle).count() >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not {count} times on the console:\n{c}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
