//! A cloud with the scheduler and conductor roles and a fleet of simulated
//! agents (mica-agent's simulated backend, real agent service code) on one
//! bus, for the scheduler and conductor tests. Instances are written and
//! handed over the way the compute API does it (rows in `building` /
//! `scheduling`, a `create` instance action, a `schedule_and_build` cast).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mica_agent::config::{ResourcesSection, SimulatedSection};
use mica_agent::sim::SimulatedAgent;
use mica_agent::{AgentOptions, spawn_fleet};
use mica_controller::app::compute::states::{task, vm};
use mica_controller::conductor::ConductorOptions;
use mica_controller::config::Config;
use mica_controller::db::instances::{self as inst, InstanceRow};
use mica_controller::db::{Backend, Timestamp, images, placement};
use mica_controller::roles::Workers;
use mica_controller::saga::TestHooks;
use mica_controller::testing::TestCloud;
use mica_rpc::conductor::{
    InstanceAction, RunInstanceAction, RunInstanceActionRequest, ScheduleAndBuild,
    ScheduleAndBuildRequest,
};
use mica_rpc::{Rpc, RpcOptions, Topic};

/// The RabbitMQ of `make setup`.
pub fn amqp_url() -> String {
    std::env::var("MICA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://mica:mica@127.0.0.1:5672/mica".into())
}

/// Which bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// The in-process bus.
    Memory,
    /// RabbitMQ.
    Amqp,
}

/// A group of identical simulated hosts.
#[derive(Debug, Clone)]
pub struct Hosts {
    /// How many.
    pub count: usize,
    /// Name prefix (`<prefix>-<n>`).
    pub prefix: String,
    /// What each pretends to be.
    pub sim: SimulatedSection,
    /// Reserved amounts and ratios.
    pub resources: ResourcesSection,
    /// Serve a console channel (on an ephemeral loopback port).
    pub consoles: bool,
}

impl Hosts {
    /// `count` hosts named `<prefix>-n` with `vcpus`, `memory_mb`,
    /// `disk_gb`, nothing reserved, ratios 1.
    pub fn new(prefix: &str, count: usize, vcpus: u64, memory_mb: u64, disk_gb: u64) -> Hosts {
        Hosts {
            count,
            prefix: prefix.into(),
            sim: SimulatedSection {
                vcpus,
                memory_mb,
                disk_gb,
                ..SimulatedSection::default()
            },
            resources: ResourcesSection {
                reserved_host_cpus: 0,
                reserved_host_memory_mb: 0,
                reserved_host_disk_mb: 0,
                cpu_allocation_ratio: 1.0,
                ram_allocation_ratio: 1.0,
                disk_allocation_ratio: 1.0,
            },
            consoles: false,
        }
    }

    /// With console channels.
    pub fn with_consoles(mut self) -> Hosts {
        self.consoles = true;
        self
    }

    /// Every build on these hosts fails (a host problem).
    pub fn failing(mut self) -> Hosts {
        self.sim.failure_rate = 1.0;
        self
    }

    /// Builds take `ms`.
    pub fn build_delay(mut self, ms: u64) -> Hosts {
        self.sim.build_delay_ms = ms;
        self
    }

    /// Builds take `ms` more or less `jitter_ms`.
    pub fn build_jitter(mut self, jitter_ms: u64) -> Hosts {
        self.sim.build_jitter_ms = jitter_ms;
        self
    }

    /// Actions take `ms`.
    pub fn action_delay(mut self, ms: u64) -> Hosts {
        self.sim.action_delay_ms = ms;
        self
    }
}

/// The test's bus: URL and options (a namespace of its own).
#[derive(Clone)]
pub struct TestBus {
    pub url: String,
    pub options: RpcOptions,
}

impl TestBus {
    pub fn new(bus: Bus) -> TestBus {
        let ns = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        match bus {
            Bus::Memory => TestBus {
                url: format!("memory://{ns}"),
                options: RpcOptions {
                    namespace: ns,
                    ..RpcOptions::default()
                },
            },
            Bus::Amqp => TestBus {
                url: amqp_url(),
                options: RpcOptions {
                    namespace: ns,
                    queue_expiry: Some(Duration::from_secs(900)),
                    reconnect_min: Duration::from_millis(50),
                    reconnect_max: Duration::from_secs(1),
                    publish_timeout: Duration::from_secs(180),
                    ..RpcOptions::default()
                },
            },
        }
    }

    pub async fn connect(&self, name: &str) -> Rpc {
        let mut o = self.options.clone();
        o.connection_name = Some(name.into());
        Rpc::connect_with(&self.url, o).await.expect("the bus")
    }

    /// The configuration keys that put a controller on this bus.
    pub fn configure(&self, c: &mut Config) {
        c.messaging.transport_url = self.url.clone();
        c.messaging.namespace = self.options.namespace.clone();
        c.messaging.queue_expiry_secs = self.options.queue_expiry.map_or(0, |d| d.as_secs());
    }
}

/// Fast intervals for tests.
pub fn test_config(c: &mut Config) {
    c.conductor.saga_lease_secs = 3;
    c.conductor.signal_poll_ms = 50;
    c.conductor.report_interval_secs = 1;
    c.conductor.build_timeout_secs = 60;
    c.conductor.action_timeout_secs = 30;
    c.conductor.shutdown_timeout_secs = 1;
    c.conductor.periodic_interval_secs = 3600;
    c.compute.service_down_time_secs = 5;
    c.scheduler.host_info_refresh_ms = 200;
    c.database.max_connections = 16;
}

/// Agent options for tests.
pub fn agent_options() -> AgentOptions {
    let mut o = AgentOptions::new("x");
    o.report_interval = Duration::from_secs(1);
    o.resource_update_interval = Duration::from_secs(5);
    o.sync_power_state_interval = Duration::from_secs(1);
    o.call_timeout = Duration::from_secs(10);
    o
}

/// See the module docs.
pub struct Fleet {
    pub cloud: TestCloud,
    pub bus: TestBus,
    /// The bus of the controller roles.
    pub rpc: Rpc,
    /// The API's handle on the bus.
    pub api: Rpc,
    pub workers: Option<Workers>,
    pub agents: Vec<SimulatedAgent>,
    pub hooks: Arc<TestHooks>,
    pub image_id: String,
    pub user_id: String,
    pub project_id: String,
}

impl Fleet {
    /// A cloud on `backend` and `bus` with the roles in this process and
    /// `hosts` registered.
    pub async fn start(
        backend: Backend,
        bus: Bus,
        hosts: &[Hosts],
        tweak: impl FnOnce(&mut Config),
    ) -> Fleet {
        Fleet::start_with(backend, bus, hosts, tweak, true).await
    }

    /// Same, with the roles in this process only if `in_process` (else run
    /// them as [`ControllerProcess`]es).
    pub async fn start_with(
        backend: Backend,
        bus: Bus,
        hosts: &[Hosts],
        tweak: impl FnOnce(&mut Config),
        in_process: bool,
    ) -> Fleet {
        let bus = TestBus::new(bus);
        let b = bus.clone();
        let cloud = TestCloud::start(backend, move |c| {
            test_config(c);
            b.configure(c);
            tweak(c);
        })
        .await;
        let rpc = bus.connect("controller").await;
        let hooks = Arc::new(TestHooks::default());
        let mut options = ConductorOptions::from_config(&cloud.app).with_hooks(hooks.clone());
        options.periodic = false;
        let workers = if in_process {
            Some(
                Workers::start(cloud.app.clone(), rpc.clone(), true, true, options)
                    .await
                    .expect("scheduler and conductor"),
            )
        } else {
            None
        };
        let mut fleet = Fleet {
            api: bus.connect("api").await,
            image_id: String::new(),
            user_id: cloud.bootstrap.admin_user_id.clone(),
            project_id: cloud.bootstrap.admin_project_id.clone(),
            cloud,
            bus,
            rpc,
            workers,
            agents: Vec::new(),
            hooks,
        };
        for h in hosts {
            fleet.add_hosts(h).await;
        }
        fleet.image_id = fleet.add_image().await;
        fleet
    }

    /// Starts more simulated agents and waits until placement has them.
    pub async fn add_hosts(&mut self, h: &Hosts) {
        let rpc = self.bus.connect("agents").await;
        let mut options = agent_options();
        if h.consoles {
            options.console = Some(mica_agent::ConsoleOptions::loopback());
        }
        let agents = spawn_fleet(&rpc, h.count, &h.prefix, &h.sim, &h.resources, &options)
            .await
            .expect("simulated agents");
        self.agents.extend(agents);
        if self.workers.is_some() {
            self.wait_for_all_hosts().await;
        }
    }

    /// Waits until placement has every agent of the fleet (once a
    /// conductor runs).
    pub async fn wait_for_all_hosts(&self) {
        let names: Vec<String> = self
            .agents
            .iter()
            .map(|a| a.agent.host().to_owned())
            .collect();
        self.wait_for_hosts(&names).await;
    }

    /// Waits until every host in `names` has its service and provider.
    pub async fn wait_for_hosts(&self, names: &[String]) {
        let db = &self.cloud.app.db;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let services = mica_controller::db::hosts::list_services(db.pool(), None, None)
                .await
                .unwrap();
            let mut ready = 0;
            for n in names {
                let has_service = services.iter().any(|s| &s.host == n);
                let p = placement::find_provider(db.pool(), n).await.unwrap();
                let has_inventory = match &p {
                    Some(p) => !placement::inventories(db.pool(), &p.uuid)
                        .await
                        .unwrap()
                        .is_empty(),
                    None => false,
                };
                if has_service && has_inventory {
                    ready += 1;
                }
            }
            if ready == names.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{ready}/{} hosts ready",
                names.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn add_image(&self) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let now = Timestamp::now();
        let img = images::Image {
            row: images::ImageRow {
                id: id.clone(),
                name: Some("tiny".into()),
                owner: Some(self.project_id.clone()),
                status: "active".into(),
                visibility: "public".into(),
                protected: false,
                os_hidden: false,
                disk_format: Some("raw".into()),
                container_format: Some("bare".into()),
                size: Some(1024),
                virtual_size: None,
                checksum: None,
                os_hash_algo: None,
                os_hash_value: None,
                min_disk: 0,
                min_ram: 0,
                created_at: now,
                updated_at: now,
                generation: 1,
            },
            properties: BTreeMap::new(),
            tags: vec![],
        };
        let mut conn = self.cloud.app.db.pool().acquire().await.unwrap();
        images::insert_image(&mut conn, &img).await.unwrap();
        id
    }

    /// An instance row as the API writes it, for a flavor.
    pub fn instance(&self, name: &str, vcpus: i64, memory_mb: i64, root_gb: i64) -> InstanceRow {
        let now = Timestamp::now();
        InstanceRow {
            uuid: uuid::Uuid::new_v4().to_string(),
            project_id: self.project_id.clone(),
            user_id: self.user_id.clone(),
            display_name: name.into(),
            display_description: None,
            hostname: name.into(),
            reservation_id: "r-test".into(),
            launch_index: 0,
            image_ref: self.image_id.clone(),
            kernel_id: None,
            ramdisk_id: None,
            flavor_id: "f".into(),
            flavor_name: "test".into(),
            vcpus,
            memory_mb,
            root_gb,
            ephemeral_gb: 0,
            swap_mb: 0,
            flavor_extra_specs: "{}".into(),
            old_flavor: None,
            new_flavor: None,
            key_name: None,
            key_data: None,
            user_data: None,
            config_drive: String::new(),
            disk_config: "MANUAL".into(),
            access_ip_v4: None,
            access_ip_v6: None,
            root_device_name: None,
            availability_zone: None,
            requested_availability_zone: None,
            forced_host: None,
            forced_node: None,
            scheduler_hints: "{}".into(),
            host: None,
            node: None,
            launched_on: None,
            vmm_id: None,
            vm_state: vm::BUILDING.into(),
            task_state: Some(task::SCHEDULING.into()),
            power_state: 0,
            progress: 0,
            locked: false,
            locked_by: None,
            locked_reason: None,
            launched_at: None,
            terminated_at: None,
            created_at: now,
            updated_at: now,
            deleted: false,
            deleted_at: None,
            generation: 1,
        }
    }

    /// Writes instances and their `create` action, as the API does.
    pub async fn insert(&self, rows: &[InstanceRow], request_id: &str) {
        let db = &self.cloud.app.db;
        let mut tx = db.begin().await.unwrap();
        for r in rows {
            inst::insert_instance(&mut tx, r).await.unwrap();
            inst::start_action(
                &mut tx,
                &r.uuid,
                request_id,
                "create",
                &r.project_id,
                &r.user_id,
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// Writes instances and hands them to the conductor as one request.
    pub async fn create(&self, rows: &[InstanceRow]) -> Vec<String> {
        let request_id = format!("req-{}", uuid::Uuid::new_v4());
        self.insert(rows, &request_id).await;
        let uuids: Vec<String> = rows.iter().map(|r| r.uuid.clone()).collect();
        self.api
            .cast_method::<ScheduleAndBuild>(
                Topic::conductor(),
                &ScheduleAndBuildRequest {
                    request_id,
                    instance_uuids: uuids.clone(),
                },
            )
            .await
            .unwrap();
        uuids
    }

    /// Creates `n` instances of a flavor, one request each.
    pub async fn create_each(
        &self,
        n: usize,
        vcpus: i64,
        memory_mb: i64,
        root_gb: i64,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for k in 0..n {
            let row = self.instance(&format!("vm-{k}"), vcpus, memory_mb, root_gb);
            out.extend(self.create(&[row]).await);
        }
        out
    }

    /// Waits until none of `uuids` is building (or gone); returns the rows
    /// (deleted ones included).
    pub async fn settle(&self, uuids: &[String], timeout: Duration) -> Vec<InstanceRow> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut rows = Vec::new();
            for u in uuids {
                rows.push(
                    inst::get_instance_any(self.cloud.app.db.pool(), u)
                        .await
                        .unwrap()
                        .expect("the instance exists"),
                );
            }
            let building = rows.iter().filter(|r| r.vm_state == vm::BUILDING).count();
            if building == 0 {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "{building} of {} instances still building after {timeout:?}",
                uuids.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An instance.
    pub async fn get(&self, uuid: &str) -> InstanceRow {
        inst::get_instance_any(self.cloud.app.db.pool(), uuid)
            .await
            .unwrap()
            .unwrap()
    }

    /// Starts an action as the API does (task state, instance action) and
    /// casts it; returns the request id.
    pub async fn action(&self, uuid: &str, action: InstanceAction) -> String {
        let (task_state, _, _) = mica_controller::conductor::actions::plan(&action);
        let request_id = format!("req-{}", uuid::Uuid::new_v4());
        let db = &self.cloud.app.db;
        let row = self.get(uuid).await;
        let g = inst::start_task(db.pool(), uuid, None, &[None], Some(task_state))
            .await
            .unwrap();
        assert!(g.is_some(), "{uuid} is busy: {:?}", row.task_state);
        let name = match &action {
            InstanceAction::Stop => "stop",
            InstanceAction::Start => "start",
            InstanceAction::Reboot { .. } => "reboot",
            InstanceAction::Pause => "pause",
            InstanceAction::Unpause => "unpause",
            InstanceAction::Suspend => "suspend",
            InstanceAction::Resume => "resume",
            InstanceAction::Delete => "delete",
        };
        let mut tx = db.begin().await.unwrap();
        inst::start_action(
            &mut tx,
            uuid,
            &request_id,
            name,
            &row.project_id,
            &row.user_id,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        self.api
            .cast_method::<RunInstanceAction>(
                Topic::conductor(),
                &RunInstanceActionRequest {
                    request_id: request_id.clone(),
                    instance_uuid: uuid.into(),
                    action,
                },
            )
            .await
            .unwrap();
        request_id
    }

    /// Waits until the instance has no task state (or is gone).
    pub async fn idle(&self, uuid: &str, timeout: Duration) -> InstanceRow {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get(uuid).await;
            if r.task_state.is_none() || r.deleted {
                return r;
            }
            assert!(Instant::now() < deadline, "{uuid} still {:?}", r.task_state);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The hosts' usage per class, from placement, with their capacity.
    pub async fn usage(&self) -> BTreeMap<String, BTreeMap<String, (i64, i64)>> {
        let db = &self.cloud.app.db;
        let mut out = BTreeMap::new();
        for p in placement::list_providers(db.pool(), &Default::default())
            .await
            .unwrap()
        {
            let used = placement::usages(db.pool(), &p.uuid).await.unwrap();
            let mut per = BTreeMap::new();
            for i in placement::inventories(db.pool(), &p.uuid).await.unwrap() {
                per.insert(
                    i.resource_class.clone(),
                    (
                        used.get(&i.resource_class).copied().unwrap_or(0),
                        i.capacity(),
                    ),
                );
            }
            out.insert(p.name.clone(), per);
        }
        out
    }

    /// Asserts no host holds more than its capacity; returns the number of
    /// allocations (consumers) in placement.
    pub async fn check_capacity(&self) {
        for (host, classes) in self.usage().await {
            for (rc, (used, cap)) in classes {
                assert!(used <= cap, "{host} over capacity in {rc}: {used} > {cap}");
            }
        }
    }

    /// The consumers holding allocations among `uuids`.
    pub async fn allocated(&self, uuids: &[String]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for u in uuids {
            if placement::consumer_allocations(self.cloud.app.db.pool(), u)
                .await
                .unwrap()
                .is_some_and(|(_, a)| !a.is_empty())
            {
                out.insert(u.clone());
            }
        }
        out
    }

    /// Instances the simulated hosts run (or keep), across the fleet.
    pub fn on_hosts(&self) -> usize {
        self.agents.iter().map(|a| a.backend.instance_count()).sum()
    }

    /// The simulated agent of `host`.
    pub fn agent(&self, host: &str) -> &SimulatedAgent {
        self.agents
            .iter()
            .find(|a| a.agent.host() == host)
            .expect("no such host")
    }

    /// Stops the roles, the agents and the cloud.
    pub async fn stop(mut self) {
        if let Some(w) = self.workers.take() {
            w.shutdown().await;
        }
        for a in self.agents.drain(..) {
            a.agent.shutdown().await;
        }
        self.cloud.stop().await;
    }
}

/// A `mica-controller` process running roles on the fleet's database and
/// bus (killed when dropped).
pub struct ControllerProcess {
    child: Option<std::process::Child>,
    /// Its log.
    pub log: std::path::PathBuf,
}

impl ControllerProcess {
    /// Runs `mica-controller <roles>` with the fleet's configuration
    /// (changed by `tweak`), logging to `<dir>/<name>.log`.
    pub fn spawn(
        f: &Fleet,
        dir: &std::path::Path,
        name: &str,
        roles: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> ControllerProcess {
        let mut config: Config = (*f.cloud.config).clone();
        for l in [
            &mut config.api.identity_listen,
            &mut config.api.compute_listen,
            &mut config.api.image_listen,
            &mut config.api.placement_listen,
            &mut config.api.network_listen,
            &mut config.api.metadata_listen,
            &mut config.api.console_proxy_listen,
        ] {
            l.clear();
        }
        config.log.level = "info,sqlx=warn,mica_rpc=warn".into();
        tweak(&mut config);
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&config).expect("config as TOML")).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_mica-controller"))
            .arg("--config")
            .arg(&path)
            .args(roles)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(out)
            .spawn()
            .expect("mica-controller");
        ControllerProcess {
            child: Some(child),
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child process by its pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child process by its pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    /// The end of its log (for failure messages).
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where controller processes log: `MICA_TEST_LOG_DIR` if set (kept after
/// the test), else `tmp`.
pub fn log_dir(tmp: &std::path::Path) -> std::path::PathBuf {
    match std::env::var("MICA_TEST_LOG_DIR") {
        Ok(d) => {
            let p = std::path::PathBuf::from(d);
            std::fs::create_dir_all(&p).unwrap();
            p
        }
        Err(_) => tmp.to_path_buf(),
    }
}
