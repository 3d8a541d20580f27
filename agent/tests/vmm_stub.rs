//! The real backend on this machine's /dev/kvm with stub guests (which any
//! KVM runs): images downloaded from mica-controller's image API, disks,
//! mica-vmm processes, every power action, VMM death, adoption after an
//! agent restart, and failed builds that leave nothing. (A guest that
//! reboots itself is tested with a real Linux guest in the nested tests: the
//! reset stub resets within milliseconds of starting, before a build can
//! see it running.)
//! No networking here (that needs root network changes: see the nested
//! tests); real Linux guests are in the nested tests too.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{ImageApi, TestBus, fast_options, random_bytes};
use mica_agent::Agent;
use mica_agent::VmmBackend;
use mica_agent::config::Config;
use mica_agent::testing::{FakeConductor, Report, instance_spec, new_uuid};
use mica_rpc::Topic;
use mica_rpc::compute::{
    Action, ConsoleOutputRequest, GetConsoleOutput, GetHostState, HostStateRequest, ImageSpec,
    PowerState,
};

const T: Duration = Duration::from_secs(20);

fn prerequisites() -> bool {
    let kvm = std::fs::metadata("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"));
    let vmm = mica_tests::artifacts::workspace_binary("mica-vmm")
        .map(|_| ())
        .map_err(|e| e.to_string());
    mica_tests::require("/dev/kvm and mica-vmm", kvm.and(vmm))
}

/// A compute host in this process: folders, configuration, backend, agent.
struct Host {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    config: Config,
    agent: Option<Agent>,
    backend: VmmBackend,
    bus: TestBus,
    name: String,
}

fn config(state: &Path, run: &Path, kernel: &Path) -> Config {
    let mut c = Config::default();
    c.agent.state_dir = state.to_owned();
    c.agent.run_dir = run.to_owned();
    c.vmm.binary = mica_tests::artifacts::workspace_binary("mica-vmm")
        .unwrap()
        .display()
        .to_string();
    c.vmm.kernel = kernel.to_owned();
    c.vmm.shutdown_timeout_s = 2;
    c.vmm.start_timeout_s = 20;
    c
}

impl Host {
    async fn start(bus: &TestBus, name: &str, kernel: &Path) -> Host {
        let state = tempfile::tempdir().unwrap();
        // Socket paths are short: a folder directly under /tmp.
        let run = tempfile::Builder::new()
            .prefix("mr")
            .tempdir_in("/tmp")
            .unwrap();
        let config = config(state.path(), run.path(), kernel);
        let backend = VmmBackend::new(name, &config).unwrap();
        let agent = Agent::start(
            bus.connect().await,
            fast_options(name),
            Arc::new(backend.clone()),
        )
        .await
        .unwrap();
        agent.registered(T).await.expect("registered");
        Host {
            _dirs: (state, run),
            config,
            agent: Some(agent),
            backend,
            bus: bus.clone(),
            name: name.to_owned(),
        }
    }

    /// Stops the agent (VMMs keep running) and starts a new one on the same
    /// folders, as a restarted process would.
    async fn restart(&mut self) {
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
        self.backend = VmmBackend::new(&self.name, &self.config).unwrap();
        let agent = Agent::start(
            self.bus.connect().await,
            fast_options(&self.name),
            Arc::new(self.backend.clone()),
        )
        .await
        .unwrap();
        agent.registered(T).await.expect("registered again");
        self.agent = Some(agent);
    }

    fn instance_dir(&self, uuid: &str) -> PathBuf {
        self.config.agent.state_dir.join("instances").join(uuid)
    }

    fn sock(&self, vmm_id: &str) -> PathBuf {
        self.config
            .agent
            .run_dir
            .join("vmm")
            .join(format!("{vmm_id}.sock"))
    }

    async fn shutdown(mut self) {
        self.backend.stop_all(Duration::from_secs(1)).await;
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
    }
}

/// The pid of the VMM serving `sock` (from its control socket).
async fn vmm_info(sock: &Path) -> Option<mica_vmm_api::VmInfo> {
    mica_agent::runner::VmmClient::new(sock).info().await.ok()
}

fn alive(pid: u32) -> bool {
    mica_agent::sys::process_state(pid).is_some_and(|s| s != 'Z')
}

/// Every mica-vmm process whose command line names `needle`.
fn vmm_processes(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            mica_agent::sys::cmdline(*pid)
                .is_some_and(|c| c.contains("mica-vmm") && c.contains(needle))
                && alive(*pid)
        })
        .collect()
}

async fn built(
    conductor: &FakeConductor,
    host: &str,
    image: ImageSpec,
    memory_mb: u64,
) -> (String, String) {
    let (uuid, vmm) = (new_uuid(), new_uuid());
    conductor
        .build(host, instance_spec(&uuid, image, 1, memory_mb, 1), &vmm)
        .await
        .unwrap();
    let b = conductor
        .wait_built(&uuid, &vmm, T)
        .await
        .expect("a build report");
    let r = b
        .result
        .unwrap_or_else(|f| panic!("build failed: {} ({})", f.message, f.details));
    assert_eq!(r.power_state, PowerState::Running);
    (uuid, vmm)
}

async fn action(
    conductor: &FakeConductor,
    host: &str,
    uuid: &str,
    a: Action,
) -> mica_rpc::conductor::ActionFinished {
    let id = new_uuid();
    conductor.power(host, uuid, &id, a).await.unwrap();
    conductor
        .wait_action(&id, T)
        .await
        .expect("an action report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_runs_a_vmm_through_every_power_action_and_terminate_removes_it() {
    if !prerequisites() {
        return;
    }
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let api = ImageApi::start().await;
    let data = random_bytes(3 << 20);
    let image = api
        .upload("stub-disk", "raw", data.clone(), &api.base)
        .await;
    let host = Host::start(&bus, "stub-1", mica_tests::artifacts::counter_guest()).await;

    let (uuid, vmm1) = built(&conductor, "stub-1", image.clone(), 64).await;
    let dir = host.instance_dir(&uuid);
    // The root disk: the image, grown to the flavor's 1 GB, sparse.
    let root = std::fs::metadata(dir.join("root.raw")).unwrap();
    assert_eq!(root.len(), 1 << 30);
    assert!(mica_agent::disks::allocated_bytes(&dir.join("root.raw")).unwrap() < 16 << 20);
    let head = std::fs::read(dir.join("root.raw")).unwrap();
    assert_eq!(&head[..data.len()], &data[..]);
    // The VMM is the one the conductor named, and runs in a session of its own.
    let info = vmm_info(&host.sock(&vmm1))
        .await
        .expect("the control socket answers");
    assert_eq!(info.id.as_deref(), Some(vmm1.as_str()));
    let sid = std::fs::read_to_string(format!("/proc/{}/stat", info.pid)).unwrap();
    let fields: Vec<&str> = sid.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_eq!(
        fields[3],
        info.pid.to_string(),
        "the VMM leads its own session"
    );

    // The serial console reaches get_console_output.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = rpc
        .call_method::<GetConsoleOutput>(
            Topic::compute("stub-1"),
            &ConsoleOutputRequest {
                instance_uuid: uuid.clone(),
                length: Some(3),
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(out.output.lines().count(), 3, "{}", out.output);
    assert!(
        out.output.lines().all(|l| l.starts_with("tick ")),
        "{}",
        out.output
    );

    // Pause: the vCPUs stop (the console stops moving); unpause.
    let done = action(&conductor, "stub-1", &uuid, Action::Pause).await;
    assert_eq!(done.result, Ok(PowerState::Paused));
    assert_eq!(
        vmm_info(&host.sock(&vmm1)).await.unwrap().state,
        mica_vmm_api::VmState::Paused
    );
    let console = dir.join("console.log");
    let before = std::fs::metadata(&console).unwrap().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        std::fs::metadata(&console).unwrap().len(),
        before,
        "a paused guest prints nothing"
    );
    let done = action(&conductor, "stub-1", &uuid, Action::Unpause).await;
    assert_eq!(done.result, Ok(PowerState::Running));
    // Suspend is a pause that reports SUSPENDED.
    let done = action(&conductor, "stub-1", &uuid, Action::Suspend).await;
    assert_eq!(done.result, Ok(PowerState::Suspended));
    let state = rpc
        .call_method::<GetHostState>(Topic::compute("stub-1"), &HostStateRequest {}, T)
        .await
        .unwrap();
    assert_eq!(state.instances[0].power_state, PowerState::Suspended);
    let done = action(&conductor, "stub-1", &uuid, Action::Resume).await;
    assert_eq!(done.result, Ok(PowerState::Running));

    // Soft reboot: the stub ignores Ctrl-Alt-Del, so after the timeout the
    // agent reboots hard, with the new VMM the request names.
    let vmm2 = new_uuid();
    let pid1 = vmm_info(&host.sock(&vmm1)).await.unwrap().pid;
    let done = action(
        &conductor,
        "stub-1",
        &uuid,
        Action::Reboot {
            hard: false,
            vmm_id: vmm2.clone(),
            shutdown_timeout_s: 1,
        },
    )
    .await;
    assert_eq!(done.result, Ok(PowerState::Running));
    assert_eq!(done.vmm_id.as_deref(), Some(vmm2.as_str()));
    assert!(!alive(pid1), "the old VMM is gone");
    assert!(!host.sock(&vmm1).exists());
    assert!(vmm_info(&host.sock(&vmm2)).await.is_some());

    // Stop: ACPI first (ignored by the stub), hard after the timeout; the
    // process is gone and nothing restarts it.
    let pid2 = vmm_info(&host.sock(&vmm2)).await.unwrap().pid;
    let done = action(
        &conductor,
        "stub-1",
        &uuid,
        Action::Stop {
            shutdown_timeout_s: 1,
        },
    )
    .await;
    assert_eq!(done.result, Ok(PowerState::Shutdown));
    assert_eq!(done.vmm_id, None);
    assert!(!alive(pid2));
    assert!(vmm_processes(&uuid).is_empty());
    // No power-state report for a requested stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !conductor
            .reports()
            .iter()
            .any(|r| matches!(r, Report::PowerState(c) if c.instance_uuid == uuid))
    );

    // Start with a new VMM, then a hard reboot with another.
    let vmm3 = new_uuid();
    let done = action(
        &conductor,
        "stub-1",
        &uuid,
        Action::Start {
            vmm_id: vmm3.clone(),
        },
    )
    .await;
    assert_eq!(done.result, Ok(PowerState::Running));
    assert_eq!(done.vmm_id.as_deref(), Some(vmm3.as_str()));
    let vmm4 = new_uuid();
    let done = action(
        &conductor,
        "stub-1",
        &uuid,
        Action::Reboot {
            hard: true,
            vmm_id: vmm4.clone(),
            shutdown_timeout_s: 0,
        },
    )
    .await;
    assert_eq!(done.result, Ok(PowerState::Running));
    assert_eq!(vmm_processes(&uuid).len(), 1);
    assert!(vmm_info(&host.sock(&vmm4)).await.is_some());

    // Terminate: no process, socket or file of the instance is left.
    conductor.terminate("stub-1", &uuid, 1).await.unwrap();
    let t = conductor.wait_terminated(&uuid, T).await.unwrap();
    assert_eq!(t.result, Ok(()));
    assert!(vmm_processes(&uuid).is_empty());
    assert!(!dir.exists());
    assert!(!host.sock(&vmm4).exists());

    // The image stays cached; unused and old enough, housekeeping removes it.
    let cached = host
        .config
        .agent
        .state_dir
        .join("images")
        .join(format!("{}.raw", image.id));
    assert!(cached.exists());
    let mut cfg = host.config.clone();
    cfg.images.remove_unused_after_s = 0;
    let cleaner = VmmBackend::new("stub-1", &cfg).unwrap();
    mica_agent::Backend::housekeeping(&cleaner).await;
    assert!(!cached.exists());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_vmm_makes_the_instance_shutoff_and_is_not_restarted() {
    if !prerequisites() {
        return;
    }
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let api = ImageApi::start().await;
    let image = api
        .upload("d", "raw", random_bytes(1 << 20), &api.base)
        .await;
    let host = Host::start(&bus, "stub-2", mica_tests::artifacts::idle_guest()).await;
    let (uuid, vmm) = built(&conductor, "stub-2", image, 32).await;
    let pid = vmm_info(&host.sock(&vmm)).await.unwrap().pid;

    mica_agent::sys::kill(pid, libc::SIGKILL).unwrap();
    let change = conductor
        .wait_for(T, |r| match r {
            Report::PowerState(c) if c.instance_uuid == uuid => Some(c.clone()),
            _ => None,
        })
        .await
        .expect("reported");
    assert_eq!(change.power_state, PowerState::Shutdown);
    assert_eq!(change.vmm_id, None);
    let db = conductor.instance(&uuid).unwrap();
    assert_eq!(db.vm_state, "stopped");
    // Not restarted behind the user's back; the sync agrees from now on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(vmm_processes(&uuid).is_empty());
    let reports = conductor
        .reports()
        .iter()
        .filter(|r| matches!(r, Report::PowerState(c) if c.instance_uuid == uuid))
        .count();
    assert_eq!(reports, 1, "the database is right now: no further reports");
    // A start brings it back.
    let done = action(
        &conductor,
        "stub-2",
        &uuid,
        Action::Start { vmm_id: new_uuid() },
    )
    .await;
    assert_eq!(done.result, Ok(PowerState::Running));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_the_running_vmms() {
    if !prerequisites() {
        return;
    }
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let api = ImageApi::start().await;
    let image = api
        .upload("d", "raw", random_bytes(1 << 20), &api.base)
        .await;
    let mut host = Host::start(&bus, "stub-4", mica_tests::artifacts::idle_guest()).await;
    let mut vms = Vec::new();
    for _ in 0..3 {
        vms.push(built(&conductor, "stub-4", image.clone(), 32).await);
    }
    let mut before = Vec::new();
    for (_, vmm) in &vms {
        before.push(vmm_info(&host.sock(vmm)).await.unwrap());
    }
    host.restart().await;
    for ((_, vmm), b) in vms.iter().zip(&before) {
        let now = vmm_info(&host.sock(vmm)).await.expect("still running");
        assert_eq!(now.pid, b.pid, "the same process");
        assert!(now.uptime_ms > b.uptime_ms, "its uptime goes on");
    }
    let state = rpc
        .call_method::<GetHostState>(Topic::compute("stub-4"), &HostStateRequest {}, T)
        .await
        .unwrap();
    assert_eq!(state.instances.len(), 3);
    assert!(
        state
            .instances
            .iter()
            .all(|i| i.power_state == PowerState::Running)
    );
    // The adopted VMMs obey: stop one.
    let done = action(
        &conductor,
        "stub-4",
        &vms[0].0,
        Action::Stop {
            shutdown_timeout_s: 1,
        },
    )
    .await;
    assert_eq!(done.result, Ok(PowerState::Shutdown));
    assert!(!alive(before[0].pid));
    // And their deaths are still noticed.
    mica_agent::sys::kill(before[1].pid, libc::SIGKILL).unwrap();
    let change = conductor
        .wait_for(T, |r| match r {
            Report::PowerState(c) if c.instance_uuid == vms[1].0 => Some(c.power_state),
            _ => None,
        })
        .await;
    assert_eq!(change, Some(PowerState::Shutdown));
    // A VMM that died while the agent was away is reported at start.
    let pid = before[2].pid;
    host.agent.take().unwrap().shutdown().await;
    mica_agent::sys::kill(pid, libc::SIGKILL).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    host.restart().await;
    let change = conductor
        .wait_for(T, |r| match r {
            Report::PowerState(c) if c.instance_uuid == vms[2].0 => Some(c.power_state),
            _ => None,
        })
        .await;
    assert_eq!(change, Some(PowerState::Shutdown));
    host.shutdown().await;
}

async fn assert_nothing_left(host: &Host, uuid: &str) {
    assert!(!host.instance_dir(uuid).exists(), "instance folder left");
    assert!(vmm_processes(uuid).is_empty(), "VMM process left");
    let partial = host.config.agent.state_dir.join("images/.partial");
    let left: Vec<_> = std::fs::read_dir(&partial).unwrap().collect();
    assert!(left.is_empty(), "partial downloads left: {left:?}");
    let socks: Vec<_> = std::fs::read_dir(host.config.agent.run_dir.join("vmm"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(socks.is_empty(), "sockets left: {socks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_builds_leave_nothing_and_say_why() {
    if !prerequisites() {
        return;
    }
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let api = ImageApi::start().await;
    let host = Host::start(&bus, "stub-5", mica_tests::artifacts::idle_guest()).await;

    let fail = |image: ImageSpec| {
        let conductor = &conductor;
        async move {
            let (uuid, vmm) = (new_uuid(), new_uuid());
            conductor
                .build("stub-5", instance_spec(&uuid, image, 1, 32, 1), &vmm)
                .await
                .unwrap();
            let b = conductor
                .wait_built(&uuid, &vmm, T)
                .await
                .expect("a build report");
            assert_eq!(conductor.instance(&uuid).unwrap().vm_state, "error");
            (uuid, b.result.expect_err("the build fails"))
        }
    };

    // A checksum that does not match the data.
    let mut bad = api
        .upload("bad-sum", "raw", random_bytes(1 << 20), &api.base)
        .await;
    bad.os_hash_value = Some("0".repeat(128));
    let (uuid, f) = fail(bad.clone()).await;
    assert!(f.message.contains("failed verification"), "{}", f.message);
    assert!(
        f.details.contains("sha512 checksum mismatch"),
        "{}",
        f.details
    );
    assert!(!f.retryable);
    assert_nothing_left(&host, &uuid).await;
    assert!(
        !host
            .config
            .agent
            .state_dir
            .join(format!("images/{}.raw", bad.id))
            .exists()
    );

    // An image the image API no longer has.
    let gone = api
        .upload("gone", "raw", random_bytes(4096), &api.base)
        .await;
    api.delete(&gone.id).await;
    let (uuid, f) = fail(gone.clone()).await;
    assert_eq!(f.message, format!("Image {} could not be found.", gone.id));
    assert_nothing_left(&host, &uuid).await;

    // A refused token.
    let mut refused = api
        .upload("tok", "raw", random_bytes(4096), &api.base)
        .await;
    refused.download_token = "not-a-token".into();
    let (uuid, f) = fail(refused).await;
    assert!(f.details.contains("refused"), "{}", f.details);
    assert_nothing_left(&host, &uuid).await;

    // The VMM fails after the disks were made (its kernel is missing).
    let good = api
        .upload("good", "raw", random_bytes(4096), &api.base)
        .await;
    let mut cfg = host.config.clone();
    cfg.vmm.kernel = "/nonexistent/vmlinux".into();
    let broken = Host {
        _dirs: (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()),
        config: cfg.clone(),
        backend: VmmBackend::new("stub-5b", &cfg).unwrap(),
        agent: None,
        bus: bus.clone(),
        name: "stub-5b".into(),
    };
    let agent = Agent::start(
        bus.connect().await,
        fast_options("stub-5b"),
        Arc::new(broken.backend.clone()),
    )
    .await
    .unwrap();
    let (uuid, vmm) = (new_uuid(), new_uuid());
    conductor
        .build("stub-5b", instance_spec(&uuid, good, 1, 32, 1), &vmm)
        .await
        .unwrap();
    let f = conductor
        .wait_built(&uuid, &vmm, T)
        .await
        .unwrap()
        .result
        .unwrap_err();
    assert!(f.message.contains("VMM failed to start"), "{}", f.message);
    assert!(f.details.contains("exit code 1"), "{}", f.details);
    assert!(f.retryable);
    assert_nothing_left(&broken, &uuid).await;
    agent.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_images_are_converted_and_concurrent_builds_share_the_cache() {
    if !prerequisites() {
        return;
    }
    if !mica_tests::require(
        "qemu-img",
        std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .map(|_| ())
            .map_err(|e| e.to_string()),
    ) {
        return;
    }
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let api = ImageApi::start().await;
    let host = Host::start(&bus, "stub-6", mica_tests::artifacts::idle_guest()).await;

    // A raw disk with a pattern, as a qcow2 image.
    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("d.raw");
    let data = random_bytes(2 << 20);
    std::fs::write(&raw, &data).unwrap();
    let qcow = work.path().join("d.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .unwrap();
    assert!(st.success());
    let image = api
        .upload("q", "qcow2", std::fs::read(&qcow).unwrap(), &api.base)
        .await;

    // Two builds at once from the uncached image: they share one cache entry.
    let ((u1, _), (u2, _)) = tokio::join!(
        built(&conductor, "stub-6", image.clone(), 32),
        built(&conductor, "stub-6", image.clone(), 32)
    );
    for u in [&u1, &u2] {
        let disk = std::fs::read(host.instance_dir(u).join("root.raw")).unwrap();
        assert_eq!(
            &disk[..data.len()],
            &data[..],
            "the guest sees the raw data"
        );
    }
    let images = host.config.agent.state_dir.join("images");
    let cached: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(cached.len(), 2, "{cached:?}: one image and its metadata");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(images.join(format!("{}.json", image.id))).unwrap())
            .unwrap();
    assert_eq!(meta["disk_format"], "qcow2");
    assert_eq!(meta["virtual_size"], data.len() as u64);
    host.shutdown().await;
}
