//! The real `openstack` CLI (pinned in `~/.cache/mica/venv` by `make setup`)
//! against a running `mica-controller all`, on each database: tokens, the
//! catalog, projects, users, roles, and images — a 100 MiB upload,
//! download byte for byte, properties, public versus private across
//! projects — then a graceful SIGTERM.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use md5::Digest;
use mica_controller::db::Backend;
use mica_controller::testing::TestDb;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openstack_cli_postgres() {
    cli_session(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openstack_cli_sqlite() {
    cli_session(Backend::Sqlite).await;
}

fn openstack() -> PathBuf {
    mica_tests::venv_bin("openstack")
}

/// Kills the controller if the test fails half-way.
struct Controller(Option<Child>);

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cli {
    bin: PathBuf,
    env: BTreeMap<String, String>,
}

impl Cli {
    fn as_user(&self, user: &str, password: &str, project: &str) -> Cli {
        let mut env = self.env.clone();
        env.insert("OS_USERNAME".into(), user.into());
        env.insert("OS_PASSWORD".into(), password.into());
        env.insert("OS_PROJECT_NAME".into(), project.into());
        Cli {
            bin: self.bin.clone(),
            env,
        }
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .envs(&self.env)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "openstack {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-f", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn write_file(path: &Path, len: usize, seed: u64) -> String {
    // Fast deterministic pseudo-random bytes (xorshift), hashed as written.
    let mut x = seed | 1;
    let mut data = vec![0u8; len];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    std::fs::write(path, &data).unwrap();
    hex::encode(md5::Md5::digest(&data))
}

async fn cli_session(backend: Backend) {
    let bin = openstack();
    let db = TestDb::create(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..7).map(|_| mica_tests::free_port()).collect();
    let (identity, image, placement) = (ports[0], ports[1], ports[2]);
    let config = format!(
        "[database]\nurl = \"{}\"\n\
         [api]\nidentity_listen = \"127.0.0.1:{}\"\nimage_listen = \"127.0.0.1:{}\"\n\
         placement_listen = \"127.0.0.1:{}\"\ncompute_listen = \"127.0.0.1:{}\"\n\
         network_listen = \"127.0.0.1:{}\"\nmetadata_listen = \"127.0.0.1:{}\"\n\
         console_proxy_listen = \"127.0.0.1:{}\"\nshutdown_grace_secs = 10\n\
         [image]\nstore_dir = \"{}\"\n",
        db.url,
        ports[0],
        ports[1],
        ports[2],
        ports[3],
        ports[4],
        ports[5],
        ports[6],
        dir.path().join("images").display()
    );
    let cfg_path = dir.path().join("controller.toml");
    std::fs::write(&cfg_path, config).unwrap();
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
    // `api` refuses an unmigrated database; `db sync` fixes that.
    let refused = Command::new(controller)
        .arg("--config")
        .arg(&cfg_path)
        .arg("api")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("db sync"));
    // So does the console proxy (it reads console tokens).
    let proxy = Command::new(controller)
        .arg("--config")
        .arg(&cfg_path)
        .arg("console-proxy")
        .output()
        .unwrap();
    assert!(!proxy.status.success());
    assert!(String::from_utf8_lossy(&proxy.stderr).contains("db sync"));
    run(&["db", "sync"]);
    let boot = run(&["bootstrap"]);
    assert!(boot.contains("catalog: identity"), "{boot}");

    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    let child = Command::new(controller)
        .arg("--config")
        .arg(&cfg_path)
        .arg("all")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut guard = Controller(Some(child));
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if http
            .get(format!("http://127.0.0.1:{identity}/v3"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
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
    let admin = Cli { bin, env };

    // `all` runs the console proxy too: its page, and a WebSocket request
    // with a made-up token refused.
    let proxy = format!("http://127.0.0.1:{}", ports[6]);
    let page = http.get(format!("{proxy}/vnc.html")).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Mica console"));
    let refused = http
        .get(format!("{proxy}/?token=made-up"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);

    // Tokens and the catalog.
    let token = admin.json(&["token", "issue"]);
    let token_id = token["id"].as_str().unwrap().to_owned();
    assert!(token["expires"].is_string() && token["project_id"].is_string());
    let catalog = admin.json(&["catalog", "list"]);
    let mut types: Vec<String> = catalog
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(
        types,
        vec![
            "compute",
            "console-proxy",
            "identity",
            "image",
            "metadata",
            "network",
            "placement"
        ]
    );
    let text = admin.ok(&["catalog", "show", "image"]);
    assert!(
        text.contains(&format!("http://127.0.0.1:{image}")),
        "{text}"
    );

    // Projects, users, roles.
    let p = admin.json(&["project", "create", "--description", "cli test", "demo"]);
    assert_eq!(p["name"], "demo");
    assert_eq!(
        names(&admin.json(&["project", "list"])),
        vec!["admin", "demo"]
    );
    assert_eq!(
        admin.json(&["project", "show", "demo"])["description"],
        "cli test"
    );
    let u = admin.json(&[
        "user",
        "create",
        "--password",
        "alice-pw",
        "--project",
        "demo",
        "alice",
    ]);
    assert_eq!(u["default_project_id"], p["id"]);
    assert_eq!(
        names(&admin.json(&["user", "list"])),
        vec!["admin", "alice"]
    );
    assert_eq!(admin.json(&["user", "show", "alice"])["name"], "alice");
    admin.ok(&[
        "role",
        "add",
        "--project",
        "demo",
        "--user",
        "alice",
        "member",
    ]);
    assert_eq!(
        names(&admin.json(&["role", "list"])),
        vec!["admin", "member", "reader"]
    );
    let a = admin.json(&["role", "assignment", "list", "--project", "demo", "--names"]);
    assert_eq!(a[0]["Role"], "member");
    assert_eq!(a[0]["User"], "alice@Default");
    let alice = admin.as_user("alice", "alice-pw", "demo");
    assert_eq!(alice.json(&["token", "issue"])["project_id"], p["id"]);
    assert!(
        alice.run(&["project", "create", "nope"]).is_err(),
        "members can't create projects"
    );

    // A 100 MiB image: upload, show, set, save, compare.
    let big = dir.path().join("big.raw");
    let md5 = write_file(&big, 100 << 20, 7);
    let started = Instant::now();
    let img = admin.json(&[
        "image",
        "create",
        "--file",
        big.to_str().unwrap(),
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "bigimg",
    ]);
    eprintln!("100 MiB image create: {:?}", started.elapsed());
    assert_eq!(img["status"], "active");
    assert_eq!(img["size"], 100u64 << 20);
    assert_eq!(img["checksum"], md5);
    assert_eq!(names(&admin.json(&["image", "list"])), vec!["bigimg"]);
    assert_eq!(admin.json(&["image", "show", "bigimg"])["checksum"], md5);
    admin.ok(&["image", "set", "--property", "hw_disk_bus=virtio", "bigimg"]);
    let shown = admin.json(&["image", "show", "bigimg"]);
    assert_eq!(shown["properties"]["hw_disk_bus"], "virtio", "{shown}");
    let out = dir.path().join("out.raw");
    admin.ok(&["image", "save", "--file", out.to_str().unwrap(), "bigimg"]);
    assert!(
        files_equal(&big, &out),
        "download equals upload byte for byte"
    );

    // Public versus private across projects.
    let small = dir.path().join("small.raw");
    write_file(&small, 1 << 20, 9);
    let s = small.to_str().unwrap();
    let public = admin.json(&[
        "image",
        "create",
        "--file",
        s,
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--public",
        "pubimg",
    ]);
    assert_eq!(public["visibility"], "public");
    let private = admin.json(&[
        "image",
        "create",
        "--file",
        s,
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--private",
        "privimg",
    ]);
    assert_eq!(private["visibility"], "private");
    assert_eq!(names(&alice.json(&["image", "list"])), vec!["pubimg"]);
    assert_eq!(
        alice.json(&["image", "show", "pubimg"])["visibility"],
        "public"
    );
    assert!(alice.run(&["image", "show", "privimg"]).is_err());
    assert!(alice.run(&["image", "show", "bigimg"]).is_err());
    assert!(alice.run(&["image", "delete", "pubimg"]).is_err());
    assert!(
        alice
            .run(&[
                "image",
                "create",
                "--file",
                s,
                "--disk-format",
                "raw",
                "--container-format",
                "bare",
                "--public",
                "x"
            ])
            .is_err(),
        "members can't publish"
    );
    let mine = alice.json(&[
        "image",
        "create",
        "--file",
        s,
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--private",
        "alice-img",
    ]);
    assert_eq!(mine["owner"], p["id"]);
    assert_eq!(
        names(&alice.json(&["image", "list"])),
        vec!["alice-img", "pubimg"]
    );
    assert_eq!(
        names(&admin.json(&["image", "list"])),
        vec!["alice-img", "bigimg", "privimg", "pubimg"]
    );
    alice.ok(&["image", "delete", "alice-img"]);

    // Clean up through the CLI.
    admin.ok(&["image", "delete", "bigimg", "pubimg", "privimg"]);
    assert!(
        admin
            .json(&["image", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    admin.ok(&[
        "role",
        "remove",
        "--project",
        "demo",
        "--user",
        "alice",
        "member",
    ]);
    assert!(
        alice.run(&["token", "issue"]).is_err(),
        "no role, no project token"
    );
    admin.ok(&["user", "delete", "alice"]);
    admin.ok(&["project", "delete", "demo"]);
    assert_eq!(names(&admin.json(&["project", "list"])), vec!["admin"]);

    // Revoke the first token; it stops working.
    admin.ok(&["token", "revoke", &token_id]);
    let r = http
        .get(format!("http://127.0.0.1:{placement}/resource_providers"))
        .header("x-auth-token", &token_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .next()
            .is_none()
    );

    // SIGTERM: a clean, prompt exit.
    let mut child = guard.0.take().unwrap();
    let pid = child.id() as libc::pid_t;
    // SAFETY: `pid` is our own child process, still running (not waited for).
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::fs::File::open(dir.path().join("controller.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("request_id=req-"), "request ids in the logs");
}

fn files_equal(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).unwrap();
            if n == 0 {
                return false;
            }
            nb += n;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}
