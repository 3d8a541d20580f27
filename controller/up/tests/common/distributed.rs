//! A distributed Mica on this machine, for the distributed end-to-end test
//! and the benchmark (`benches/up.rs` includes this file): a fresh PostgreSQL
//! database, `mica-controller db sync` and `bootstrap`, one `mica-controller
//! api scheduler conductor` process on RabbitMQ, and `mica init`. Compute
//! hosts are added by the caller.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mica_controller::db::Backend;
use mica_controller::testing::TestDb;
use mica_tests::nested::HOST_FROM_L1;

/// The admin password of the distributed cloud.
pub const ADMIN_PASSWORD: &str = "admin-secret";

/// The controller side of a distributed cloud; stopped when dropped.
pub struct Distributed {
    controller: Child,
    /// The bus namespace agents must use.
    pub namespace: String,
    /// `http://127.0.0.1:<port>/v3`.
    pub identity: String,
    /// The image API's port on 127.0.0.1.
    pub image_port: u16,
    /// The clouds `mica` and `mica-demo`.
    pub clouds_yaml: PathBuf,
    pub log: PathBuf,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

impl Distributed {
    /// Starts it; `log_level` is the controller's.
    pub fn start(rt: &tokio::runtime::Runtime, log_level: &str) -> Distributed {
        let db = rt.block_on(TestDb::create(Backend::Postgres));
        let dir = tempfile::tempdir().unwrap();
        let namespace = format!("dist-{}", std::process::id());
        let ports: Vec<u16> = (0..5).map(|_| mica_tests::free_port()).collect();
        let config = dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"{}\"\nmax_connections = 8\n\n\
                 [messaging]\ntransport_url = \"amqp://mica:mica@127.0.0.1:5672/mica\"\n\
                 namespace = \"{namespace}\"\nqueue_expiry_secs = 600\n\n\
                 [api]\nidentity_listen = \"127.0.0.1:{}\"\ncompute_listen = \"127.0.0.1:{}\"\n\
                 image_listen = \"127.0.0.1:{}\"\nplacement_listen = \"127.0.0.1:{}\"\n\
                 network_listen = \"127.0.0.1:{}\"\nmetadata_listen = \"\"\nconsole_proxy_listen = \"\"\n\n\
                 [image]\nstore_dir = \"{}\"\n\n[log]\nlevel = \"{log_level}\"\n\n\
                 [bootstrap]\nadmin_password = \"{ADMIN_PASSWORD}\"\n",
                db.url,
                ports[0],
                ports[1],
                ports[2],
                ports[3],
                ports[4],
                dir.path().join("images").display()
            ),
        )
        .unwrap();
        let ctl = mica_tests::artifacts::workspace_binary("mica-controller").unwrap();
        for step in [&["db", "sync"][..], &["bootstrap"][..]] {
            let out = Command::new(&ctl)
                .arg("--config")
                .arg(&config)
                .args(step)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "mica-controller {step:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let log = dir.path().join("controller.log");
        let controller = Command::new(&ctl)
            .arg("--config")
            .arg(&config)
            .args(["api", "scheduler", "conductor"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Distributed {
            controller,
            namespace,
            identity: format!("http://127.0.0.1:{}/v3", ports[0]),
            image_port: ports[2],
            clouds_yaml: dir.path().join("clouds.yaml"),
            log,
            _db: db,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_err() {
            assert!(
                d.controller.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "the controller did not start:\n{}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = Command::new(env!("CARGO_BIN_EXE_mica"))
            .args([
                "init",
                "--identity-url",
                &d.identity,
                "--image-internal-url",
            ])
            .arg(format!("http://{HOST_FROM_L1}:{}", d.image_port))
            .arg("--clouds-yaml")
            .arg(&d.clouds_yaml)
            .env("MICA_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("MICA_DEMO_PASSWORD", "demo-secret")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mica init: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        d
    }
}

impl Drop for Distributed {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.controller.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.controller.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.controller.kill();
        let _ = self.controller.wait();
    }
}
