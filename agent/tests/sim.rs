//! The agent's service with the simulated backend, driven through its real
//! RPC interface with the test playing the conductor: registration,
//! heartbeats, inventory, every compute method and its report, power-state
//! sync, and a fleet of agents in one process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestBus, fast_options};
use mica_agent::config::{ResourcesSection, SimulatedSection};
use mica_agent::testing::{FakeConductor, Report, instance_spec, new_uuid};
use mica_agent::{Agent, SimulatedBackend, spawn_fleet};
use mica_rpc::Topic;
use mica_rpc::compute::{
    Action, ConsoleOutputRequest, GetConsoleOutput, GetHostState, HostStateRequest, ImageSpec,
    PowerState,
};

const T: Duration = Duration::from_secs(10);

fn image() -> ImageSpec {
    ImageSpec {
        id: "img".into(),
        name: "tiny".into(),
        disk_format: "raw".into(),
        size: 1,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        download_url: "http://nowhere/v2/images/img/file".into(),
        download_token: "t".into(),
        properties: Default::default(),
    }
}

async fn agent(bus: &TestBus, host: &str, sim: SimulatedSection) -> (Agent, Arc<SimulatedBackend>) {
    let backend = Arc::new(SimulatedBackend::new(
        host,
        sim,
        ResourcesSection::default(),
    ));
    let agent = Agent::start(bus.connect().await, fast_options(host), backend.clone())
        .await
        .unwrap();
    (agent, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_and_reports_its_inventory() {
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let (agent, _) = agent(&bus, "sim-1", SimulatedSection::default()).await;

    let reg = agent.registered(T).await.expect("registered");
    assert_eq!(reg.service_id, "service-sim-1");
    assert!(conductor.reports().iter().any(|r| matches!(r,
        Report::Registered(req) if req.host == "sim-1" && req.binary == "mica-agent" && req.version == env!("CARGO_PKG_VERSION"))));

    // The conductor asked for a heartbeat every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let beats = conductor.heartbeats("sim-1");
    assert!((2..=4).contains(&beats), "{beats} heartbeats in 2.5 s");

    let p = conductor.provider("sim-1").expect("inventory reported");
    let vcpu = &p.inventories["VCPU"];
    assert_eq!((vcpu.total, vcpu.allocation_ratio), (64, 4.0));
    assert_eq!(p.inventories["MEMORY_MB"].reserved, 512);
    assert_eq!(p.inventories["DISK_GB"].total, 4096);
    assert!(p.traits.contains(&"HW_CPU_X86_AVX2".to_owned()));
    assert_eq!(p.hypervisor.running_vms, 0);

    // Heartbeats stop with the agent.
    agent.shutdown().await;
    let after = conductor.heartbeats("sim-1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(conductor.heartbeats("sim-1"), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compute_method_reports_its_outcome() {
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let sim = SimulatedSection {
        build_delay_ms: 200,
        ..Default::default()
    };
    let (agent, backend) = agent(&bus, "sim-2", sim).await;
    agent.registered(T).await.unwrap();

    let uuid = new_uuid();
    let vmm1 = new_uuid();
    conductor
        .build("sim-2", instance_spec(&uuid, image(), 2, 256, 1), &vmm1)
        .await
        .unwrap();
    let built = conductor
        .wait_built(&uuid, &vmm1, T)
        .await
        .expect("build report");
    let running = built.result.expect("built");
    assert_eq!(running.power_state, PowerState::Running);
    assert!(running.took_ms >= 200, "took {} ms", running.took_ms);
    assert_eq!(built.host, "sim-2");
    assert_eq!(conductor.instance(&uuid).unwrap().vm_state, "active");

    // The same cast again (a redelivery) changes nothing and reports again.
    conductor
        .build("sim-2", instance_spec(&uuid, image(), 2, 256, 1), &vmm1)
        .await
        .unwrap();
    let n = conductor
        .wait_for(T, |r| {
            let n = conductor
                .reports()
                .iter()
                .filter(|r| matches!(r, Report::Built(b) if b.instance_uuid == uuid))
                .count();
            (matches!(r, Report::Built(_)) && n == 2).then_some(n)
        })
        .await;
    assert_eq!(n, Some(2));
    assert_eq!(backend.instance_count(), 1);

    // Calls: console output and host state.
    let out = rpc
        .call_method::<GetConsoleOutput>(
            Topic::compute("sim-2"),
            &ConsoleOutputRequest {
                instance_uuid: uuid.clone(),
                length: Some(1),
            },
            T,
        )
        .await
        .unwrap();
    assert!(
        out.output.starts_with("=== Mica simulated guest"),
        "{}",
        out.output
    );
    let state = rpc
        .call_method::<GetHostState>(Topic::compute("sim-2"), &HostStateRequest {}, T)
        .await
        .unwrap();
    assert_eq!(state.instances.len(), 1);
    assert_eq!(state.instances[0].vmm_id.as_deref(), Some(vmm1.as_str()));

    // Power actions, each reported with the VMM running after it.
    let vmm2 = new_uuid();
    let steps: Vec<(Action, PowerState, Option<&str>)> = vec![
        (Action::Pause, PowerState::Paused, Some(&vmm1)),
        (Action::Unpause, PowerState::Running, Some(&vmm1)),
        (Action::Suspend, PowerState::Suspended, Some(&vmm1)),
        (Action::Resume, PowerState::Running, Some(&vmm1)),
        (
            Action::Stop {
                shutdown_timeout_s: 5,
            },
            PowerState::Shutdown,
            None,
        ),
        (
            Action::Start {
                vmm_id: vmm2.clone(),
            },
            PowerState::Running,
            Some(&vmm2),
        ),
    ];
    for (n, (action, state, vmm)) in steps.into_iter().enumerate() {
        let name = action.name();
        let req_id = format!("req-{n}");
        conductor
            .power("sim-2", &uuid, &req_id, action)
            .await
            .unwrap();
        let done = conductor
            .wait_action(&req_id, T)
            .await
            .expect("action report");
        assert_eq!(done.action, name);
        assert_eq!(done.result, Ok(state), "{name}");
        assert_eq!(done.vmm_id.as_deref(), vmm, "{name}");
    }
    // Unpause and resume of a running instance change nothing (Running).
    for (req_id, action) in [("req-noop", Action::Unpause), ("req-noop2", Action::Resume)] {
        conductor
            .power("sim-2", &uuid, req_id, action)
            .await
            .unwrap();
        let done = conductor
            .wait_action(req_id, T)
            .await
            .expect("action report");
        assert_eq!(done.result, Ok(PowerState::Running), "{req_id}");
    }
    // An action the state does not allow fails, and says why.
    let start_again = Action::Start { vmm_id: new_uuid() };
    conductor
        .power("sim-2", &uuid, "req-bad3", start_again)
        .await
        .unwrap();
    let bad = conductor.wait_action("req-bad3", T).await.unwrap();
    assert!(bad.result.unwrap_err().message.contains("Cannot start"));

    // Terminate: gone, reported; again: still fine.
    conductor.terminate("sim-2", &uuid, 0).await.unwrap();
    let t = conductor.wait_terminated(&uuid, T).await.unwrap();
    assert_eq!(t.result, Ok(()));
    assert_eq!(backend.instance_count(), 0);
    conductor.terminate("sim-2", &uuid, 0).await.unwrap();
    let mut seen = 0;
    let again = conductor
        .wait_for(T, |r| match r {
            Report::Terminated(t) if t.instance_uuid == uuid => {
                seen += 1;
                (seen == 2).then(|| t.clone())
            }
            _ => None,
        })
        .await
        .expect("a second terminate report");
    assert_eq!(again.result, Ok(()));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_host_reports_retryable_failures() {
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let sim = SimulatedSection {
        failure_rate: 1.0,
        ..Default::default()
    };
    let (agent, backend) = agent(&bus, "sim-3", sim).await;
    let uuid = new_uuid();
    let vmm = new_uuid();
    conductor
        .build("sim-3", instance_spec(&uuid, image(), 1, 128, 1), &vmm)
        .await
        .unwrap();
    let built = conductor.wait_built(&uuid, &vmm, T).await.unwrap();
    let f = built.result.unwrap_err();
    assert!(f.retryable);
    assert!(f.message.contains("failed"), "{}", f.message);
    assert_eq!(backend.instance_count(), 0);
    assert_eq!(conductor.instance(&uuid).unwrap().vm_state, "error");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_reported_and_sync_corrects_the_database() {
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let (agent, backend) = agent(&bus, "sim-4", SimulatedSection::default()).await;
    agent.registered(T).await.unwrap();

    let a = new_uuid();
    let va = new_uuid();
    conductor
        .build("sim-4", instance_spec(&a, image(), 1, 128, 1), &va)
        .await
        .unwrap();
    conductor
        .wait_built(&a, &va, T)
        .await
        .unwrap()
        .result
        .unwrap();

    // Its VMM dies: reported SHUTOFF at once, not restarted.
    assert!(backend.crash(&a));
    let change = conductor
        .wait_for(T, |r| match r {
            Report::PowerState(c) if c.instance_uuid == a => Some(c.clone()),
            _ => None,
        })
        .await
        .expect("power state report");
    assert_eq!(change.power_state, PowerState::Shutdown);
    assert_eq!(change.vmm_id, None);
    assert_eq!(conductor.instance(&a).unwrap().vm_state, "stopped");

    // The database believes in an instance this host does not have: the
    // periodic sync reports it as NOSTATE (as Nova does).
    let ghost = new_uuid();
    conductor.set_instance(&ghost, "sim-4", PowerState::Running);
    let nostate = conductor
        .wait_for(Duration::from_secs(5), |r| match r {
            Report::PowerState(c) if c.instance_uuid == ghost => Some(c.power_state),
            _ => None,
        })
        .await;
    assert_eq!(nostate, Some(PowerState::NoState));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_simulated_agents_in_one_process() {
    let bus = TestBus::memory();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let mut opts = fast_options("x");
    opts.report_interval = Duration::from_secs(5);
    opts.sync_power_state_interval = Duration::from_secs(600);
    let sim = SimulatedSection {
        build_delay_ms: 50,
        build_jitter_ms: 25,
        ..Default::default()
    };
    let fleet = spawn_fleet(&rpc, 100, "fake", &sim, &ResourcesSection::default(), &opts)
        .await
        .unwrap();
    for a in &fleet {
        a.agent.registered(T).await.expect("every agent registers");
    }
    let mut builds = Vec::new();
    for (n, a) in fleet.iter().enumerate() {
        let uuid = new_uuid();
        let vmm = new_uuid();
        conductor
            .build(
                a.agent.host(),
                instance_spec(&uuid, image(), 1, 128, 1),
                &vmm,
            )
            .await
            .unwrap();
        builds.push((n, uuid, vmm));
    }
    for (n, uuid, vmm) in &builds {
        let b = conductor.wait_built(uuid, vmm, T).await.expect("built");
        assert_eq!(b.host, format!("fake-{n}"));
        assert!(b.result.is_ok());
    }
    assert!(fleet.iter().all(|a| a.backend.instance_count() == 1));
    // Every provider was reported, then again with its running VM.
    let reported = conductor
        .wait_for(T, |_| {
            (0..100)
                .all(|n| {
                    conductor
                        .provider(&format!("fake-{n}"))
                        .is_some_and(|p| p.hypervisor.running_vms == 1)
                })
                .then_some(())
        })
        .await;
    assert!(
        reported.is_some(),
        "running_vms reached placement for every host"
    );
    for a in fleet {
        a.agent.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_over_rabbitmq() {
    let bus = TestBus::amqp();
    let rpc = bus.connect().await;
    let conductor = FakeConductor::serve(&rpc).await.unwrap();
    let fleet = spawn_fleet(
        &rpc,
        5,
        "amqp-sim",
        &SimulatedSection::default(),
        &ResourcesSection::default(),
        &fast_options("x"),
    )
    .await
    .unwrap();
    let mut builds = Vec::new();
    for a in &fleet {
        a.agent.registered(T).await.unwrap();
        let (uuid, vmm) = (new_uuid(), new_uuid());
        conductor
            .build(
                a.agent.host(),
                instance_spec(&uuid, image(), 1, 128, 1),
                &vmm,
            )
            .await
            .unwrap();
        builds.push((uuid, vmm));
    }
    for (uuid, vmm) in &builds {
        assert!(
            conductor
                .wait_built(uuid, vmm, T)
                .await
                .unwrap()
                .result
                .is_ok()
        );
    }
    for a in fleet {
        a.agent.shutdown().await;
    }
}
