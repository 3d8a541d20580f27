//! Controller benchmarks (issue 4): token issue and validation latency,
//! `GET /v2/images` with 10,000 images, image upload throughput against a
//! plain file copy, and `GET /allocation_candidates` with 1,000 providers.
//!
//! ```sh
//! cargo bench -p mica-controller --bench controller            # both databases
//! cargo bench -p mica-controller --bench controller -- sqlite  # one of them
//! cargo bench -p mica-controller --bench controller -- postgres placement  # one section
//! ```
//!
//! Sections: `tokens`, `images`, `upload`, `placement` (all by default).
//!
//! Each run starts a controller in-process on ephemeral ports over a fresh
//! database and talks to it over loopback HTTP, as clients do. Password
//! hashing uses the production defaults of `[identity]`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use mica_controller::app::ServiceKind;
use mica_controller::config::Config;
use mica_controller::db::images::{Image, ImageRow};
use mica_controller::db::placement::{self as pdb, Claim, ConsumerGeneration, Inventory, Provider};
use mica_controller::db::{Backend, Timestamp};
use mica_controller::testing::{ADMIN_PASSWORD, TestCloud};
use serde_json::{Value, json};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench
    // binaries without it, and should not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "controller benchmarks: run them with `cargo bench -p mica-controller --bench controller`"
        );
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let sections: Vec<String> = args
        .iter()
        .filter(|a| ["tokens", "images", "upload", "placement"].contains(&a.as_str()))
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
        "machine: {} cores; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );
    for b in backends {
        rt.block_on(run(b));
    }
}

static SECTIONS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Whether a section was asked for (all when none was named).
fn want(section: &str) -> bool {
    let s = SECTIONS.get().unwrap();
    s.is_empty() || s.iter().any(|x| x == section)
}

struct Stats {
    n: usize,
    mean: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len();
    let pick = |q: f64| v[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
    Stats {
        n,
        mean: v.iter().sum::<Duration>() / n as u32,
        p50: pick(0.50),
        p99: pick(0.99),
        max: v[n - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn row(backend: &str, what: &str, s: &Stats) {
    println!(
        "| {backend} | {what} | {} | {} | {} | {} | {} |",
        s.n,
        ms(s.p50),
        ms(s.p99),
        ms(s.mean),
        ms(s.max)
    );
}

async fn time<F, Fut>(n: usize, mut f: F) -> Stats
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        v.push(t.elapsed());
    }
    stats(v)
}

async fn run(backend: Backend) {
    let name = match backend {
        Backend::Postgres => "PostgreSQL",
        Backend::Sqlite => "SQLite",
    };
    let defaults = Config::default();
    let cloud = TestCloud::start(backend, |c| {
        // Production password hashing and pool size.
        c.identity = defaults.identity.clone();
        c.database.max_connections = defaults.database.max_connections;
        c.image.max_image_size_bytes = 4 << 30;
    })
    .await;
    let http = reqwest::Client::new();
    let identity = cloud.base(ServiceKind::Identity);
    let image = cloud.base(ServiceKind::Image);
    let placement = cloud.base(ServiceKind::Placement);
    println!("\n## {name}\n");
    println!("| database | operation | n | p50 ms | p99 ms | mean ms | max ms |");
    println!("|---|---|---|---|---|---|---|");

    // ---- tokens ------------------------------------------------------------
    let auth = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}
    }});
    if want("tokens") {
        let issue = |_| {
            let (http, identity, auth) = (&http, &identity, &auth);
            async move {
                let r = http
                    .post(format!("{identity}/v3/auth/tokens"))
                    .json(auth)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                r.bytes().await.unwrap();
            }
        };
        for i in 0..5 {
            issue(i).await;
        }
        row(
            name,
            "token issue (password, argon2id 19 MiB × 2, catalog)",
            &time(200, issue).await,
        );
        let r = http
            .post(format!("{identity}/v3/auth/tokens"))
            .json(&auth)
            .send()
            .await
            .unwrap();
        let token = r.headers()["x-subject-token"].to_str().unwrap().to_owned();
        let validate = |_| {
            let (http, identity, token) = (&http, &identity, &token);
            async move {
                let r = http
                    .head(format!("{identity}/v3/auth/tokens"))
                    .header("x-auth-token", token)
                    .header("x-subject-token", token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        };
        row(
            name,
            "token validate (HEAD /v3/auth/tokens: caller + subject)",
            &time(2000, validate).await,
        );
        let app = cloud.app.clone();
        let direct = |_| {
            let (app, token) = (&app, &token);
            async move {
                mica_controller::app::identity::validate_token(app, token)
                    .await
                    .unwrap();
            }
        };
        row(
            name,
            "token validate, in-process (no HTTP)",
            &time(5000, direct).await,
        );
        let authed = |_| {
            let (http, image, token) = (&http, &image, &token);
            async move {
                let r = http
                    .get(format!("{image}/v2/schemas/image"))
                    .header("x-auth-token", token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        };
        row(
            name,
            "baseline: GET /v2/schemas/image (no token check)",
            &time(2000, authed).await,
        );
    }
    let r = http
        .post(format!("{identity}/v3/auth/tokens"))
        .json(&auth)
        .send()
        .await
        .unwrap();
    let token = r.headers()["x-subject-token"].to_str().unwrap().to_owned();
    let app = cloud.app.clone();
    let project = cloud.bootstrap.admin_project_id.clone();

    // ---- 10,000 images ---------------------------------------------------------
    if want("images") {
        let started = Instant::now();
        let mut tx = app.db.begin().await.unwrap();
        let base = Timestamp::now();
        for i in 0..10_000 {
            let t = base.plus_secs(-(10_000 - i as i64));
            let img = Image {
                row: ImageRow {
                    id: uuid::Uuid::new_v4().to_string(),
                    name: Some(format!("image-{i:05}")),
                    owner: Some(project.clone()),
                    status: "active".into(),
                    visibility: if i % 10 == 0 {
                        "public".into()
                    } else {
                        "shared".into()
                    },
                    protected: false,
                    os_hidden: false,
                    disk_format: Some("raw".into()),
                    container_format: Some("bare".into()),
                    size: Some(1 << 30),
                    virtual_size: Some(1 << 30),
                    checksum: Some("0".repeat(32)),
                    os_hash_algo: Some("sha512".into()),
                    os_hash_value: Some("0".repeat(128)),
                    min_disk: 0,
                    min_ram: 0,
                    created_at: t,
                    updated_at: t,
                    generation: 1,
                },
                properties: BTreeMap::from([
                    ("os_distro".to_owned(), "debian".to_owned()),
                    ("hw_disk_bus".to_owned(), "virtio".to_owned()),
                ]),
                tags: vec![format!("batch-{}", i % 7)],
            };
            mica_controller::db::images::insert_image(&mut tx, &img)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        println!(
            "| {name} | (setup: insert 10,000 images with 2 properties and a tag each: {:.1} s) | | | | | |",
            started.elapsed().as_secs_f64()
        );
        let list = |q: &'static str, who: String| {
            let (http, image) = (http.clone(), image.clone());
            move |_| {
                let (http, image, who) = (http.clone(), image.clone(), who.clone());
                async move {
                    let r = http
                        .get(format!("{image}/v2/images{q}"))
                        .header("x-auth-token", &who)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let b: Value = r.json().await.unwrap();
                    assert!(!b["images"].as_array().unwrap().is_empty());
                }
            }
        };
        row(
            name,
            "GET /v2/images, 10,000 images, admin, default page (25)",
            &time(300, list("", token.clone())).await,
        );
        row(
            name,
            "GET /v2/images?limit=1000, 10,000 images, admin",
            &time(30, list("?limit=1000", token.clone())).await,
        );
        row(
            name,
            "GET /v2/images?name=image-05000 (filter)",
            &time(300, list("?name=image-05000", token.clone())).await,
        );
        // A member of another project: visibility filter (1,000 public images).
        let member_token = member_token(&http, &identity).await;
        row(
            name,
            "GET /v2/images, 10,000 images, other project's member (sees 1,000 public)",
            &time(300, list("", member_token.clone())).await,
        );
        let pages = Instant::now();
        let mut url = format!("{image}/v2/images?limit=1000");
        let mut seen = 0;
        loop {
            let b: Value = http
                .get(&url)
                .header("x-auth-token", &token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            seen += b["images"].as_array().unwrap().len();
            match b["next"].as_str() {
                Some(n) => url = format!("{image}{n}"),
                None => break,
            }
        }
        assert_eq!(seen, 10_000);
        println!(
            "| {name} | page through all 10,000 images by next, limit=1000 | 1 | {} | | | |",
            ms(pages.elapsed())
        );
    }

    // ---- upload throughput --------------------------------------------------------
    if want("upload") {
        let size: usize = 512 << 20;
        let dir = cloud.store.path().to_path_buf();
        let src = dir.join("upload-source.bin");
        let mut data = vec![0u8; size];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(&src, &data).unwrap();
        // Plain copy of the same file on the same disk, synced like the upload.
        let mut copy_secs = Vec::new();
        for i in 0..3 {
            let dst = dir.join(format!("copy-{i}.bin"));
            let t = Instant::now();
            std::fs::copy(&src, &dst).unwrap();
            std::fs::File::open(&dst).unwrap().sync_all().unwrap();
            copy_secs.push(t.elapsed().as_secs_f64());
            std::fs::remove_file(&dst).unwrap();
        }
        let mut up_secs = Vec::new();
        for i in 0..3 {
            let r = http
            .post(format!("{image}/v2/images"))
            .header("x-auth-token", &token)
            .json(&json!({"name": format!("up-{i}"), "disk_format": "raw", "container_format": "bare"}))
            .send()
            .await
            .unwrap();
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let body = bytes::Bytes::from(data.clone());
            let t = Instant::now();
            let r = http
                .put(format!("{image}/v2/images/{id}/file"))
                .header("x-auth-token", &token)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
            up_secs.push(t.elapsed().as_secs_f64());
            http.delete(format!("{image}/v2/images/{id}"))
                .header("x-auth-token", &token)
                .send()
                .await
                .unwrap();
        }
        let mib = (size >> 20) as f64;
        let best = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let (bu, bc) = (best(&up_secs), best(&copy_secs));
        let (mu, mc) = (median(&mut up_secs), median(&mut copy_secs));
        println!(
            "| {name} | upload 512 MiB (PUT …/file: md5 + sha512 + fsync + rename) | 3 | {:.0} MiB/s median, {:.0} best | | | |",
            mib / mu,
            mib / bu
        );
        println!(
            "| {name} | plain copy 512 MiB on the same disk (fs::copy + fsync) | 3 | {:.0} MiB/s median, {:.0} best | | | |",
            mib / mc,
            mib / bc
        );
        // What the hashes alone cost on this machine (one core each).
        use md5::Digest;
        let t = Instant::now();
        std::hint::black_box(md5::Md5::digest(&data));
        let md5_rate = mib / t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(sha2::Sha512::digest(&data));
        let sha_rate = mib / t.elapsed().as_secs_f64();
        println!(
            "| {name} | for reference: md5 alone {md5_rate:.0} MiB/s, sha512 alone {sha_rate:.0} MiB/s (one core each) | | | | | |"
        );
        std::fs::remove_file(&src).unwrap();
        drop(data);
    }

    // ---- allocation candidates, 1,000 providers ------------------------------------------
    if want("placement") {
        let started = Instant::now();
        let agg = uuid::Uuid::new_v4().to_string();
        let mut tx = app.db.begin().await.unwrap();
        let mut uuids = Vec::new();
        for i in 0..1000 {
            let now = Timestamp::now();
            let uuid = uuid::Uuid::new_v4().to_string();
            pdb::create_provider(
                &mut *tx,
                &Provider {
                    uuid: uuid.clone(),
                    name: format!("compute-{i:04}"),
                    generation: 0,
                    parent_provider_uuid: None,
                    root_provider_uuid: uuid.clone(),
                    created_at: now,
                    updated_at: now,
                },
            )
            .await
            .unwrap();
            let inv = |rc: &str, total: i64, ratio: f64| Inventory {
                resource_class: rc.into(),
                total,
                reserved: 0,
                min_unit: 1,
                max_unit: total,
                step_size: 1,
                allocation_ratio: ratio,
            };
            pdb::replace_inventories(
                &mut tx,
                &uuid,
                &[
                    inv("VCPU", 64, 4.0),
                    inv("MEMORY_MB", 262144, 1.0),
                    inv("DISK_GB", 2000, 1.0),
                ],
            )
            .await
            .unwrap();
            let mut traits = std::collections::BTreeSet::from(["HW_CPU_X86_AVX2".to_owned()]);
            if i % 2 == 0 {
                traits.insert("STORAGE_DISK_SSD".to_owned());
            }
            pdb::replace_provider_traits(&mut tx, &uuid, &traits)
                .await
                .unwrap();
            if i % 4 == 0 {
                pdb::replace_provider_aggregates(
                    &mut tx,
                    &uuid,
                    &std::collections::BTreeSet::from([agg.clone()]),
                )
                .await
                .unwrap();
            }
            uuids.push(uuid);
        }
        // Some load: 4 instances per provider.
        let mut claims = Vec::new();
        for u in &uuids {
            for _ in 0..4 {
                claims.push(Claim {
                    consumer_uuid: uuid::Uuid::new_v4().to_string(),
                    project_id: project.clone(),
                    user_id: "bench".into(),
                    consumer_generation: ConsumerGeneration::New,
                    allocations: BTreeMap::from([(
                        u.clone(),
                        BTreeMap::from([
                            ("VCPU".to_owned(), 4),
                            ("MEMORY_MB".to_owned(), 8192),
                            ("DISK_GB".to_owned(), 40),
                        ]),
                    )]),
                });
            }
        }
        pdb::write_allocations(&mut tx, &claims, &BTreeMap::new())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        println!(
            "| {name} | (setup: 1,000 providers, 3 inventories, traits, 4,000 allocations: {:.1} s) | | | | | |",
            started.elapsed().as_secs_f64()
        );
        let cands = |q: String, expect: usize| {
            let (http, placement, token) = (http.clone(), placement.clone(), token.clone());
            move |_| {
                let (http, placement, token, q) =
                    (http.clone(), placement.clone(), token.clone(), q.clone());
                async move {
                    let r = http
                        .get(format!("{placement}/allocation_candidates?{q}"))
                        .header("x-auth-token", &token)
                        .header("openstack-api-version", "placement 1.24")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let b: Value = r.json().await.unwrap();
                    assert_eq!(
                        b["allocation_requests"].as_array().unwrap().len(),
                        expect,
                        "{q}"
                    );
                }
            }
        };
        row(
            name,
            "GET /allocation_candidates, 1,000 providers, all 1,000 returned",
            &time(
                50,
                cands("resources=VCPU:2,MEMORY_MB:4096,DISK_GB:20".into(), 1000),
            )
            .await,
        );
        row(
            name,
            "… limit=50",
            &time(
                200,
                cands(
                    "resources=VCPU:2,MEMORY_MB:4096,DISK_GB:20&limit=50".into(),
                    50,
                ),
            )
            .await,
        );
        row(name, "… required=STORAGE_DISK_SSD,!HW_CPU_X86_SGX&member_of=<agg> (250)", &time(100, cands(format!("resources=VCPU:2,MEMORY_MB:4096,DISK_GB:20&required=STORAGE_DISK_SSD,!HW_CPU_X86_SGX&member_of={agg}"), 250)).await);
        let scheduler = |_| {
            let app = app.clone();
            async move {
                let f = pdb::ProviderFilter {
                    resources: vec![
                        ("VCPU".into(), 2),
                        ("MEMORY_MB".into(), 4096),
                        ("DISK_GB".into(), 20),
                    ],
                    limit: Some(1000),
                    ..Default::default()
                };
                let c = mica_controller::app::placement::candidates(&app, f)
                    .await
                    .unwrap();
                assert_eq!(c.len(), 1000);
            }
        };
        row(
            name,
            "placement's candidates() in-process, 1,000 providers (no HTTP)",
            &time(50, scheduler).await,
        );
    }
    std::io::stdout().flush().unwrap();
    cloud.stop().await;
}

async fn member_token(http: &reqwest::Client, identity: &str) -> String {
    // Create project "other" and user "bob" with member through the API.
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
    let admin_token = r.headers()["x-subject-token"].to_str().unwrap().to_owned();
    let p: Value = http
        .post(format!("{identity}/v3/projects"))
        .header("x-auth-token", &admin_token)
        .json(&json!({"project": {"name": "other"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let u: Value = http
        .post(format!("{identity}/v3/users"))
        .header("x-auth-token", &admin_token)
        .json(&json!({"user": {"name": "bob", "password": "bob-pw"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let roles: Value = http
        .get(format!("{identity}/v3/roles?name=member"))
        .header("x-auth-token", &admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (pid, uid, rid) = (
        p["project"]["id"].as_str().unwrap(),
        u["user"]["id"].as_str().unwrap(),
        roles["roles"][0]["id"].as_str().unwrap(),
    );
    http.put(format!(
        "{identity}/v3/projects/{pid}/users/{uid}/roles/{rid}"
    ))
    .header("x-auth-token", &admin_token)
    .send()
    .await
    .unwrap();
    let r = http
        .post(format!("{identity}/v3/auth/tokens"))
        .json(
            &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "bob", "domain": {"id": "default"}, "password": "bob-pw"}}},
            "scope": {"project": {"name": "other", "domain": {"id": "default"}}}}}),
        )
        .send()
        .await
        .unwrap();
    r.headers()["x-subject-token"].to_str().unwrap().to_owned()
}
