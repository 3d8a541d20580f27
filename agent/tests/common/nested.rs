//! A compute host inside the nested test host (L1): the real `mica-agent`
//! binary runs there as root, with real bridges, taps, dnsmasq, nftables and
//! KVM, and boots real Linux guests (L2). This process plays the controller:
//! RabbitMQ (this machine's, reached from L1 as 10.0.2.100:5672), the image
//! API of mica-controller (also reached through 10.0.2.100) and a fake
//! conductor on a namespace of its own.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mica_agent::testing::{FakeConductor, Report, new_uuid};
use mica_rpc::compute::{
    ConsoleOutputRequest, Direction, FixedIp, GetConsoleOutput, ImageSpec, InstanceSpec,
    NetworkSpec, PortSpec, SecurityGroupRule, SecurityGroupSpec, SubnetSpec,
};
use mica_rpc::{Rpc, Topic};
use mica_tests::artifacts::{GuestImages, GuestKernel};
use mica_tests::nested::{HOST_FROM_L1, NestedHost, NestedOptions};

use super::{ImageApi, TestBus};

/// The agent's host name in L1.
pub const HOST: &str = "l1-compute";

/// The test network: 10.20.0.0/24, the host is 10.20.0.1.
pub const NET_ID: &str = "7e1d0c2a-5b3f-4c1e-9a8d-000000000001";
pub const SUBNET_ID: &str = "7e1d0c2a-5b3f-4c1e-9a8d-000000000002";
pub const SG_ID: &str = "7e1d0c2a-5b3f-4c1e-9a8d-0000000000df";
pub const GATEWAY: &str = "10.20.0.1";

/// Quotes a string for bash.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Standard base64 (for `mica.run=`).
pub fn base64(data: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = data.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn rule(
    direction: Direction,
    protocol: Option<&str>,
    ports: Option<(u16, u16)>,
    prefix: Option<&str>,
    group: Option<&str>,
) -> SecurityGroupRule {
    SecurityGroupRule {
        id: new_uuid(),
        direction,
        ethertype: "IPv4".into(),
        protocol: protocol.map(Into::into),
        port_range_min: ports.map(|p| p.0),
        port_range_max: ports.map(|p| p.1),
        remote_ip_prefix: prefix.map(Into::into),
        remote_group_id: group.map(Into::into),
    }
}

/// Nova's `default` group (egress anywhere, ingress from members), with
/// `extra` rules and `members`' addresses.
pub fn default_group(members: &[String], extra: Vec<SecurityGroupRule>) -> SecurityGroupSpec {
    let mut rules = vec![
        rule(Direction::Egress, None, None, None, None),
        SecurityGroupRule {
            ethertype: "IPv6".into(),
            ..rule(Direction::Egress, None, None, None, None)
        },
        rule(Direction::Ingress, None, None, None, Some(SG_ID)),
        SecurityGroupRule {
            ethertype: "IPv6".into(),
            ..rule(Direction::Ingress, None, None, None, Some(SG_ID))
        },
    ];
    rules.extend(extra);
    SecurityGroupSpec {
        id: SG_ID.into(),
        name: "default".into(),
        rules,
        member_ips: members.to_vec(),
    }
}

/// `openstack security group rule create --protocol icmp default`.
pub fn icmp_in() -> SecurityGroupRule {
    rule(
        Direction::Ingress,
        Some("icmp"),
        None,
        Some("0.0.0.0/0"),
        None,
    )
}

pub fn network() -> NetworkSpec {
    NetworkSpec {
        id: NET_ID.into(),
        name: "private".into(),
        network_type: "flat".into(),
        mtu: 1500,
        subnets: vec![SubnetSpec {
            id: SUBNET_ID.into(),
            cidr: "10.20.0.0/24".into(),
            ip_version: 4,
            gateway_ip: Some(GATEWAY.into()),
            dns_nameservers: vec![],
            enable_dhcp: true,
        }],
        nat: true,
        isolated: false,
    }
}

/// A port with address `10.20.0.<n>`.
pub fn port(n: u8, groups: Vec<SecurityGroupSpec>) -> PortSpec {
    PortSpec {
        id: new_uuid(),
        mac_address: format!("fa:16:3e:00:14:{n:02x}"),
        network: network(),
        fixed_ips: vec![FixedIp {
            subnet_id: SUBNET_ID.into(),
            ip_address: format!("10.20.0.{n}"),
        }],
        security_groups: groups,
        port_security_enabled: true,
    }
}

/// An m1.nano-like instance of `image` on one port.
pub fn instance(image: &ImageSpec, hostname: &str, port: PortSpec) -> InstanceSpec {
    let mut spec = mica_agent::testing::instance_spec(&new_uuid(), image.clone(), 1, 128, 1);
    spec.hostname = hostname.into();
    spec.name = hostname.into();
    spec.ports = vec![port];
    spec
}

/// The whole setup.
pub struct NestedCompute {
    pub host: NestedHost,
    pub api: ImageApi,
    pub conductor: FakeConductor,
    pub rpc: Rpc,
    pub bus: TestBus,
    /// The tiny guest image as a compressed qcow2 (1.4 MB: little to carry
    /// through QEMU's user network), uploaded, as L1 downloads it.
    pub tiny: ImageSpec,
    /// The same image raw (64 MB).
    pub tiny_raw: ImageSpec,
    pub rt: tokio::runtime::Runtime,
    config: String,
    name: String,
}

/// The agent's folders in L1.
pub const STATE_DIR: &str = "/var/lib/mica";
pub const RUN_DIR: &str = "/run/mica";

impl NestedCompute {
    /// Boots L1 and prepares everything but the agent; `None` (skipped) when
    /// the nested host or the guest artifacts are missing.
    pub fn boot(name: &str, memory_mib: u32, extra_config: &str) -> Option<NestedCompute> {
        let available = NestedHost::available()
            .and_then(|_| GuestKernel::locate().map(|_| ()).map_err(|e| e.to_string()))
            .and_then(|_| GuestImages::locate().map(|_| ()).map_err(|e| e.to_string()))
            .and_then(|_| {
                mica_tests::artifacts::workspace_binary("mica-vmm")
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        if !mica_tests::require(
            "the nested test host, guest artifacts and mica-vmm",
            available,
        ) {
            return None;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bus = TestBus::amqp();
        let (api, rpc, conductor, tiny, tiny_raw) = rt.block_on(async {
            let api = ImageApi::start().await;
            let rpc = bus.connect().await;
            let conductor = FakeConductor::serve(&rpc).await.unwrap();
            let base = format!("http://{HOST_FROM_L1}:{}", api.port());
            let raw = GuestImages::locate().unwrap().tiny_ext4();
            let tiny = api.upload("tiny", "qcow2", tiny_qcow2(&raw), &base).await;
            let tiny_raw = api
                .upload("tiny-raw", "raw", std::fs::read(&raw).unwrap(), &base)
                .await;
            (api, rpc, conductor, tiny, tiny_raw)
        });
        let mut opts = NestedOptions::new(name);
        opts.memory_mib = memory_mib;
        opts.host_ports = vec![5672, api.port()];
        let host = NestedHost::boot(opts).expect("the nested host boots");
        assert!(
            host.ready_line().contains("kvm=yes"),
            "{}",
            host.ready_line()
        );
        eprintln!("nested host ready in {:?}", host.boot_time());
        let kernel = GuestKernel::locate().unwrap().vmlinux();
        let config = format!(
            r#"[agent]
host = "{HOST}"
state_dir = "{STATE_DIR}"
run_dir = "{RUN_DIR}"
report_interval_s = 1
sync_power_state_interval_s = 5
log_level = "info,mica_agent=debug"

[rpc]
url = "amqp://mica:mica@{HOST_FROM_L1}:5672/mica"
namespace = "{ns}"
queue_expiry_s = 600

[vmm]
binary = "{vmm}"
kernel = "{kernel}"
cmdline = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet"
extra_cmdline = "noxsave"
shutdown_timeout_s = 20
start_timeout_s = 60
{extra_config}
"#,
            ns = bus.options.namespace,
            vmm = mica_tests::artifacts::workspace_binary("mica-vmm")
                .unwrap()
                .display(),
            kernel = kernel.display(),
        );
        Some(NestedCompute {
            host,
            api,
            conductor,
            rpc,
            bus,
            tiny,
            tiny_raw,
            rt,
            config,
            name: name.to_owned(),
        })
    }

    /// The agent's configuration file as L1 sees it.
    pub fn config_path(&self) -> String {
        "/mica-job/agent.toml".into()
    }

    fn shared(&self, name: &str) -> PathBuf {
        self.host.shared_dir().join(name)
    }

    /// Starts `mica-agent` in L1 (as a background job) and waits until it
    /// registered (its `n`th registration).
    pub fn start_agent(&self) {
        std::fs::write(self.shared("agent.toml"), &self.config).unwrap();
        let before = self.registrations();
        let script = format!(
            "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             echo $$ > /mica-job/agent.pid\n\
             exec {} --config /mica-job/agent.toml >>/mica-job/agent.log 2>&1\n",
            env!("CARGO_BIN_EXE_mica-agent")
        );
        let _job = self.host.spawn(&script).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.registrations() <= before {
            assert!(
                Instant::now() < deadline,
                "the agent did not register within 60 s\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn registrations(&self) -> usize {
        self.conductor
            .reports()
            .iter()
            .filter(|r| matches!(r, Report::Registered(req) if req.host == HOST))
            .count()
    }

    /// Sends `signal` to the agent and waits until it is gone.
    pub fn stop_agent(&self, signal: &str) {
        self.sh(&format!(
            "pid=$(cat /mica-job/agent.pid); kill -{signal} $pid; \
             for i in $(seq 1 100); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done; \
             echo agent still running; exit 1"
        ));
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.shared("agent.log")).unwrap_or_default()
    }

    /// Runs a script in L1; panics (with the agent's log) unless it exits 0.
    pub fn sh(&self, script: &str) -> String {
        let out = self
            .host
            .run_timeout(
                &format!("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n{script}"),
                Duration::from_secs(300),
            )
            .unwrap();
        assert_eq!(
            out.code,
            0,
            "L1: {script}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- agent log (tail) ---\n{}",
            out.stdout,
            out.stderr,
            tail(&self.agent_log(), 60)
        );
        out.stdout
    }

    /// Runs a script in L1 and returns its exit code and output.
    pub fn try_sh(&self, script: &str) -> (i32, String) {
        let out = self
            .host
            .run_timeout(
                &format!("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n{script}"),
                Duration::from_secs(300),
            )
            .unwrap();
        (out.code, format!("{}{}", out.stdout, out.stderr))
    }

    /// Casts a build and waits for its report.
    pub fn build(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> (String, mica_rpc::conductor::BuildFinished) {
        let vmm = new_uuid();
        let report = self.rt.block_on(async {
            self.conductor
                .build(HOST, spec.clone(), &vmm)
                .await
                .unwrap();
            self.conductor.wait_built(&spec.uuid, &vmm, timeout).await
        });
        let report = report.unwrap_or_else(|| {
            panic!(
                "no build report within {timeout:?}\n{}",
                tail(&self.agent_log(), 80)
            )
        });
        (vmm, report)
    }

    /// The instance's console through the agent's RPC interface.
    pub fn console(&self, uuid: &str) -> String {
        self.rt
            .block_on(self.rpc.call_method::<GetConsoleOutput>(
                Topic::compute(HOST),
                &ConsoleOutputRequest {
                    instance_uuid: uuid.into(),
                    length: None,
                },
                Duration::from_secs(30),
            ))
            .map(|o| o.output)
            .unwrap_or_else(|e| format!("(console unavailable: {e})"))
    }

    /// Waits until the console shows `needle`.
    pub fn wait_console(&self, uuid: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.console(uuid);
            if c.contains(needle) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not on the console of {uuid} within {timeout:?}:\n{c}\n--- agent log (tail) ---\n{}",
                tail(&self.agent_log(), 60)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// GET /vm of a VMM, from L1.
    pub fn vm_info(&self, vmm_id: &str) -> Option<serde_json::Value> {
        let (code, out) = self.try_sh(&format!(
            "curl -s --max-time 5 --unix-socket {RUN_DIR}/vmm/{vmm_id}.sock http://vmm/vm"
        ));
        if code != 0 {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    /// What is left in L1 of the agent's work: taps, bridges, mica nft
    /// tables, dnsmasq and mica-vmm processes, instance folders.
    pub fn leftovers(&self) -> String {
        self.sh(&format!(
            "echo taps: $(ls /sys/class/net | grep '^tap' | while read i; do [ -e /sys/class/net/$i/tun_flags ] && echo $i; done)\n\
             echo bridges: $(ls /sys/class/net | grep '^brq')\n\
             echo namespaces: $(ls /run/netns 2>/dev/null)\n\
             echo tables: $(nft list tables | grep mica_ | awk '{{print $3}}')\n\
             echo dnsmasq: $(pgrep -x dnsmasq)\n\
             echo vmms: $(pgrep -f '^[^ ]*mica-vmm ')\n\
             echo instances: $(ls {STATE_DIR}/instances 2>/dev/null)\n"
        ))
    }
}

impl Drop for NestedCompute {
    fn drop(&mut self) {
        // Kept next to the harness's L1 console logs.
        let logs = mica_tests::repo_root().join("target").join("nested-logs");
        if std::fs::create_dir_all(&logs).is_ok() {
            let _ = std::fs::copy(
                self.shared("agent.log"),
                logs.join(format!("{}-agent.log", self.name)),
            );
        }
        if std::thread::panicking() && self.host.console_log().contains("soft lockup") {
            eprintln!(
                "NOTE: L1's kernel reported soft lockups (see target/nested-logs/{}-*.log): \
                 the nested test host itself froze (QEMU TCG with nested SVM), which no \
                 process in it survives",
                self.name
            );
        }
        if std::thread::panicking() {
            eprintln!("--- agent log (tail) ---\n{}", tail(&self.agent_log(), 120));
        }
    }
}

/// The raw image at `raw` as a compressed qcow2.
pub fn tiny_qcow2(raw: &std::path::Path) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&out)
        .status()
        .expect("qemu-img (make setup installs qemu-utils)");
    assert!(status.success());
    std::fs::read(out).unwrap()
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The empty state `leftovers` reports.
pub const NOTHING_LEFT: &str =
    "taps:\nbridges:\nnamespaces:\ntables:\ndnsmasq:\nvmms:\ninstances:\n";
