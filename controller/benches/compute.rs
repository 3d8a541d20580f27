//! Compute API benchmarks (issue 5): `GET /servers/detail` with 10,000
//! servers in the project (the default page, 1,000 servers), and `POST
//! /servers` accept latency (request to 202) under 20 concurrent clients;
//! and the metadata service (issue 14): `meta_data.json` as guests fetch
//! it, through the agent's metadata proxy in a network namespace (needs
//! root), requests per second and latency.
//!
//! ```sh
//! cargo bench -p mica-controller --bench compute            # both databases
//! cargo bench -p mica-controller --bench compute -- sqlite   # one of them
//! cargo bench -p mica-controller --bench compute -- postgres create
//! cargo bench -p mica-controller --bench compute -- sqlite metadata
//! MICA_BENCH_METADATA_CACHE_SECS=0 cargo bench -p mica-controller --bench compute -- metadata
//! ```
//!
//! Sections: `detail`, `create`, `metadata` (all by default). A controller runs
//! in-process on ephemeral ports over a fresh database; requests go over
//! loopback HTTP as clients send them. The 10,000 servers are written
//! through the datastore (ACTIVE, each with metadata, a tag and a port with
//! an address), which is what the listing reads.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mica_controller::app::ServiceKind;
use mica_controller::config::Config;
use mica_controller::db::instances::{self as inst, InstanceRow};
use mica_controller::db::network::{self as net, Port, PortIp, PortRow};
use mica_controller::db::{Backend, Timestamp};
use mica_controller::testing::{ADMIN_PASSWORD, TestCloud};
use serde_json::{Value, json};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "compute benchmarks: run them with `cargo bench -p mica-controller --bench compute`"
        );
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let sections: Vec<String> = args
        .iter()
        .filter(|a| ["detail", "create", "metadata"].contains(&a.as_str()))
        .cloned()
        .collect();
    SECTIONS.set(sections).unwrap();
    let backends: Vec<Backend> = if args.iter().any(|a| a == "sqlite") {
        vec![Backend::Sqlite]
    } else if args.iter().any(|a| a == "postgres") {
        vec![Backend::Postgres]
    } else {
        vec![Backend::Postgres, Backend::Sqlite]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    for b in backends {
        rt.block_on(run(b));
    }
}

static SECTIONS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

const METADATA_SECRET: &str = "bench-metadata-secret";

fn want(section: &str) -> bool {
    let s = SECTIONS.get().unwrap();
    s.is_empty() || s.iter().any(|x| x == section)
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    let n = v.len();
    v[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn row(backend: &str, what: &str, mut v: Vec<Duration>) {
    let n = v.len();
    let mean = v.iter().sum::<Duration>() / n as u32;
    let p50 = pct(&mut v, 0.50);
    let p99 = pct(&mut v, 0.99);
    let max = v[n - 1];
    println!(
        "| {backend} | {what} | {n} | {} | {} | {} | {} |",
        ms(p50),
        ms(p99),
        ms(mean),
        ms(max)
    );
}

async fn token(http: &reqwest::Client, identity: &str) -> (String, String) {
    let r = http
        .post(format!("{identity}/v3/auth/tokens"))
        .json(
            &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}),
        )
        .send()
        .await
        .unwrap();
    let t = r.headers()["x-subject-token"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    (
        t,
        body["token"]["project"]["id"].as_str().unwrap().to_owned(),
    )
}

fn instance(project: &str, user: &str, n: usize, flavor: &str, image: &str) -> InstanceRow {
    let now = Timestamp::now();
    InstanceRow {
        uuid: uuid::Uuid::new_v4().to_string(),
        project_id: project.into(),
        user_id: user.into(),
        display_name: format!("bench-{n:05}"),
        display_description: None,
        hostname: format!("bench-{n:05}"),
        reservation_id: format!("r-{n:08}"),
        launch_index: 0,
        image_ref: image.into(),
        kernel_id: None,
        ramdisk_id: None,
        flavor_id: flavor.into(),
        flavor_name: "m1.bench".into(),
        vcpus: 1,
        memory_mb: 64,
        root_gb: 1,
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
        root_device_name: Some("/dev/vda".into()),
        availability_zone: Some("nova".into()),
        requested_availability_zone: None,
        forced_host: None,
        forced_node: None,
        scheduler_hints: "{}".into(),
        host: Some(format!("node-{}", n % 50)),
        node: Some(format!("node-{}", n % 50)),
        launched_on: Some(format!("node-{}", n % 50)),
        vmm_id: Some(uuid::Uuid::new_v4().to_string()),
        vm_state: "active".into(),
        task_state: None,
        power_state: 1,
        progress: 0,
        locked: false,
        locked_by: None,
        locked_reason: None,
        launched_at: Some(now),
        terminated_at: None,
        created_at: now,
        updated_at: now,
        deleted: false,
        deleted_at: None,
        generation: 1,
    }
}

/// `count` servers with metadata, a tag and a port each, on a new /16 of
/// the default network, written through the datastore: (uuid, address) of
/// each.
async fn insert_servers(
    app: &mica_controller::app::App,
    project: &str,
    flavor: &str,
    image: &str,
    count: usize,
) -> Vec<(String, String)> {
    let db = &app.db;
    let user = "bench-user";
    let net_row = net::default_network(db.pool()).await.unwrap().unwrap();
    let subnet_id = uuid::Uuid::new_v4().to_string();
    let now = Timestamp::now();
    net::insert_subnet(
        db.pool(),
        &net::SubnetRow {
            id: subnet_id.clone(),
            network_id: net_row.id.clone(),
            project_id: project.to_owned(),
            name: "bench".into(),
            description: String::new(),
            ip_version: 4,
            cidr: "172.20.0.0/16".into(),
            gateway_ip: Some("172.20.0.1".into()),
            enable_dhcp: true,
            allocation_pools: json!([{"start": "172.20.0.2", "end": "172.20.255.254"}]).to_string(),
            dns_nameservers: "[]".into(),
            host_routes: "[]".into(),
            created_at: now,
            updated_at: now,
            revision_number: 1,
        },
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    for chunk in 0..count.div_ceil(500) {
        let mut tx = db.begin().await.unwrap();
        for k in 0..500.min(count - chunk * 500) {
            let n = chunk * 500 + k;
            let i = instance(project, user, n, flavor, image);
            inst::insert_instance(&mut tx, &i).await.unwrap();
            let mut meta = BTreeMap::new();
            meta.insert("role".to_owned(), "bench".to_owned());
            inst::merge_metadata(&mut tx, &i.uuid, &meta).await.unwrap();
            inst::add_tag(&mut *tx, &i.uuid, "bench").await.unwrap();
            let port_id = uuid::Uuid::new_v4().to_string();
            let ip = format!("172.20.{}.{}", (n + 2) / 256, (n + 2) % 256);
            out.push((i.uuid.clone(), ip.clone()));
            net::insert_port(
                &mut tx,
                &Port {
                    row: PortRow {
                        id: port_id.clone(),
                        network_id: net_row.id.clone(),
                        project_id: project.to_owned(),
                        name: String::new(),
                        description: String::new(),
                        mac_address: format!(
                            "fa:16:3e:{:02x}:{:02x}:{:02x}",
                            n >> 16 & 0xff,
                            n >> 8 & 0xff,
                            n & 0xff
                        ),
                        admin_state_up: true,
                        status: "ACTIVE".into(),
                        device_id: i.uuid.clone(),
                        device_owner: "compute:nova".into(),
                        binding_host_id: i.host.clone().unwrap_or_default(),
                        port_security_enabled: true,
                        delete_with_device: true,
                        bound_instance: i.uuid.clone(),
                        created_at: now,
                        updated_at: now,
                        revision_number: 1,
                    },
                    fixed_ips: vec![PortIp {
                        port_id,
                        subnet_id: subnet_id.clone(),
                        ip_address: ip,
                    }],
                    security_groups: vec![],
                },
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    out
}

async fn run(backend: Backend) {
    let name = match backend {
        Backend::Postgres => "PostgreSQL",
        Backend::Sqlite => "SQLite",
    };
    let defaults = Config::default();
    let cloud = TestCloud::start(backend, |c| {
        c.identity = defaults.identity.clone();
        c.database.max_connections = defaults.database.max_connections;
        c.quota.instances = -1;
        c.quota.cores = -1;
        c.quota.ram = -1;
        c.network.quota_port = -1;
        c.metadata.shared_secret = METADATA_SECRET.into();
        // `MICA_BENCH_METADATA_CACHE_SECS=0`: every request reads the database.
        if let Ok(v) = std::env::var("MICA_BENCH_METADATA_CACHE_SECS") {
            c.metadata.cache_expiration_secs = v.parse().expect("seconds");
        }
        c.api.metadata_listen = "127.0.0.1:0".into();
    })
    .await;
    let http = reqwest::Client::new();
    let identity = cloud.base(ServiceKind::Identity);
    let compute = cloud.base(ServiceKind::Compute);
    let image_api = cloud.base(ServiceKind::Image);
    let (tok, project) = token(&http, &identity).await;
    println!("\n## {name}\n");
    println!("| database | operation | n | p50 ms | p99 ms | mean ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    // A flavor and an image.
    let f: Value = http
        .post(format!("{compute}/v2.1/flavors"))
        .header("x-auth-token", &tok)
        .json(&json!({"flavor": {"name": "m1.bench", "ram": 64, "vcpus": 1, "disk": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let flavor = f["flavor"]["id"].as_str().unwrap().to_owned();
    let img: Value = http
        .post(format!("{image_api}/v2/images"))
        .header("x-auth-token", &tok)
        .json(&json!({"name": "bench", "disk_format": "raw", "container_format": "bare", "visibility": "public"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let image = img["id"].as_str().unwrap().to_owned();
    http.put(format!("{image_api}/v2/images/{image}/file"))
        .header("x-auth-token", &tok)
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    let app = cloud.app.clone();

    // 10,000 servers for the listing (and the metadata service's lookups),
    // or one for the metadata service alone.
    let t = Instant::now();
    let count = if want("detail") { 10_000 } else { 1 };
    let servers = insert_servers(&app, &project, &flavor, &image, count).await;
    if want("detail") {
        let db = &app.db;
        println!(
            "\n(10,000 servers with ports written in {:.1} s; database now holds {} instances)\n",
            t.elapsed().as_secs_f64(),
            inst::count_all(db.pool()).await.unwrap()
        );
        let get = |mv: &'static str| {
            let (http, compute, tok) = (http.clone(), compute.clone(), tok.clone());
            async move {
                let r = http
                    .get(format!("{compute}/v2.1/servers/detail"))
                    .header("x-auth-token", &tok)
                    .header("openstack-api-version", format!("compute {mv}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["servers"].as_array().unwrap().len(), 1000);
                assert!(body["servers_links"].is_array());
            }
        };
        get("2.96").await;
        let mut v = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            get("2.96").await;
            v.push(t.elapsed());
        }
        row(
            name,
            "GET /servers/detail at 2.96, 10,000 servers, default page (1,000)",
            v,
        );
        let mut v = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            get("2.1").await;
            v.push(t.elapsed());
        }
        row(name, "GET /servers/detail at 2.1, same", v);
        let mut v = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            let r = http
                .get(format!("{compute}/v2.1/servers/detail?limit=100"))
                .header("x-auth-token", &tok)
                .header("openstack-api-version", "compute 2.96")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            v.push(t.elapsed());
        }
        row(name, "GET /servers/detail?limit=100, 10,000 servers", v);
    }

    if want("create") {
        // 20 clients, 20 creates each, on the shared network (a port each).
        let clients = 20;
        let per_client = 20;
        let all = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (http, compute, tok, flavor, image, all) = (
                http.clone(),
                compute.clone(),
                tok.clone(),
                flavor.clone(),
                image.clone(),
                all.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for k in 0..per_client {
                    let t = Instant::now();
                    let r = http
                        .post(format!("{compute}/v2.1/servers"))
                        .header("x-auth-token", &tok)
                        .header("openstack-api-version", "compute 2.96")
                        .json(
                            &json!({"server": {"name": format!("c{c}-{k}"), "imageRef": image,
                            "flavorRef": flavor, "networks": "auto"}}),
                        )
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
                    r.bytes().await.unwrap();
                    all.lock().await.push(t.elapsed());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let wall = started.elapsed();
        let v = all.lock().await.clone();
        let n = v.len();
        row(
            name,
            "POST /servers (networks auto: quota, port, cast), 20 concurrent clients",
            v,
        );
        println!(
            "\n({n} creates in {:.2} s: {:.0} servers/s accepted)\n",
            wall.as_secs_f64(),
            n as f64 / wall.as_secs_f64()
        );
    }
    if want("metadata") {
        metadata(name, &cloud, &project, &servers[0].0).await;
    }
    std::io::stdout().flush().unwrap();
    cloud.stop().await;
}

/// Guests fetching `meta_data.json` over keep-alive connections from a
/// namespace, through the agent's proxy in its gateway's namespace, to the
/// controller's metadata service (signature check, instance, ports and
/// subnets read from the database each time).
async fn metadata(name: &str, cloud: &TestCloud, project: &str, instance: &str) {
    use mica_agent::network::metadata::{MetadataProxy, Place, Requester};
    use mica_tests::netns::{GUESTS, NetnsPair};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("\n(metadata: skipped, network namespaces need root)\n");
        return;
    }
    let pair = NetnsPair::new(&format!("mica-mdbench-{}", std::process::id())).unwrap();
    let proxy = MetadataProxy::new(&cloud.base(ServiceKind::Metadata), METADATA_SECRET).unwrap();
    proxy
        .serve(
            "bench",
            Place::Namespace(pair.gateway.clone()),
            [(
                GUESTS[0].parse().unwrap(),
                Requester {
                    instance_uuid: instance.to_owned(),
                    project_id: project.to_owned(),
                },
            )]
            .into(),
        )
        .unwrap();
    let clients = 8;
    let per_client = 1500;
    let started = Instant::now();
    let mut threads = Vec::new();
    for _ in 0..clients {
        let ns = pair.guest.clone();
        let uuid = instance.to_owned();
        threads.push(tokio::task::spawn_blocking(move || {
            NetnsPair::within(&ns, move || guest_requests(per_client, &uuid)).unwrap()
        }));
    }
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.await.unwrap());
    }
    let wall = started.elapsed();
    let n = all.len();
    row(
        name,
        "GET /openstack/latest/meta_data.json from a guest, via the proxy, 8 keep-alive connections",
        all,
    );
    println!(
        "\n({n} requests in {:.2} s: {:.0} requests/s)\n",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    proxy.stop("bench");
}

/// One guest's keep-alive connection: `n` GETs of its `meta_data.json`,
/// each checked; the latency of each.
fn guest_requests(n: usize, uuid: &str) -> Vec<Duration> {
    use std::io::{BufRead as _, BufReader, Read as _};
    let s = std::net::TcpStream::connect(("169.254.169.254", 80)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        w.write_all(
            b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        )
        .unwrap();
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        out.push(t.elapsed());
        assert!(String::from_utf8_lossy(&body).contains(uuid));
    }
    out
}
