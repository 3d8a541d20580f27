//! Helpers of the end-to-end tests: a `mica up` process, the pinned
//! `openstack` CLI, commands on the compute host.

#![allow(dead_code)]

pub mod distributed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether this test can run here (the nested test host and the guest
/// artifacts; with MICA_REQUIRE_KVM=1 a missing piece fails the test).
pub fn available() -> bool {
    let what = mica_tests::nested::NestedHost::available()
        .and_then(|_| {
            mica_tests::artifacts::GuestKernel::locate()
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .and_then(|_| {
            mica_tests::artifacts::workspace_binary("mica-vmm")
                .and_then(|_| mica_tests::artifacts::workspace_binary("mica-agent"))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    mica_tests::require(
        "the nested test host, guest artifacts, mica-vmm and mica-agent",
        what,
    )
}

/// A running `mica up`.
pub struct Up {
    child: Option<Child>,
    pub state: PathBuf,
    pub out: PathBuf,
    pub err: PathBuf,
    pub started_in: Duration,
}

impl Up {
    /// Starts `mica up` on `state` and waits until it is ready. A `mica up`
    /// of a run that was killed (a timed-out try) may still be stopping:
    /// its ports are waited for first. This one is told to stop (SIGTERM)
    /// if the test's thread dies without dropping it.
    pub fn start(state: &Path, extra: &[&str]) -> Up {
        std::fs::create_dir_all(state).unwrap();
        let freed = Instant::now() + Duration::from_secs(180);
        while std::net::TcpListener::bind("127.0.0.1:5000").is_err() {
            assert!(
                Instant::now() < freed,
                "127.0.0.1:5000 still taken after 180 s (another mica up?)"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let out = state.join("up.out");
        let err = state.join("up.err");
        let started = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mica"));
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .arg("up")
            .arg("--state-dir")
            .arg(state)
            .arg("--clouds-yaml")
            .arg(state.join("clouds.yaml"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let mut up = Up {
            child: Some(child),
            state: state.to_path_buf(),
            out,
            err,
            started_in: Duration::ZERO,
        };
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if std::fs::read_to_string(&up.out)
                .unwrap_or_default()
                .contains("mica up: ready")
            {
                up.started_in = started.elapsed();
                return up;
            }
            if let Some(status) = up.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mica up ended ({status}):\n{}", up.log_tail(80));
            }
            assert!(
                Instant::now() < deadline,
                "mica up not ready in 240 s:\n{}",
                up.log_tail(80)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.err).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// What mica up says of its compute host (`<state>/compute.json`).
    pub fn described(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state.join("compute.json")).unwrap())
            .unwrap()
    }

    /// The compute host: `(host name, job folder of the nested host)`.
    pub fn compute(&self) -> (String, PathBuf) {
        let v = self.described();
        (
            v["host"].as_str().unwrap().to_owned(),
            PathBuf::from(v["job_folder"].as_str().expect("a nested compute host")),
        )
    }

    /// The nested compute host's shared folder, if mica up has one.
    fn job_folder(&self) -> Option<PathBuf> {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(self.state.join("compute.json")).ok()?)
                .ok()?;
        v["job_folder"].as_str().map(PathBuf::from)
    }

    /// Runs a script on the compute host (L1).
    pub fn on_host(&self, script: &str) -> mica_tests::nested::JobOutput {
        let (_, jobs) = self.compute();
        mica_tests::nested::run_in_job_folder(
            &jobs,
            &format!(
                "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n{script}"
            ),
            Duration::from_secs(120),
        )
        .unwrap()
    }

    /// Ctrl-C; waits for the end and answers whether it exited 0.
    pub fn interrupt(&mut self, timeout: Duration) -> bool {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                // Killed, mica up could not power its nested host off.
                if let Some(jobs) = self.job_folder()
                    && mica_tests::nested::kill_orphaned_qemu(&jobs)
                {
                    eprintln!("killed the nested host mica up left running");
                }
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn cli(&self, cloud: &str) -> Cli {
        let mut env = BTreeMap::new();
        env.insert(
            "OS_CLIENT_CONFIG_FILE".to_owned(),
            self.state.join("clouds.yaml").display().to_string(),
        );
        env.insert("OS_CLOUD".to_owned(), cloud.to_owned());
        Cli { env }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.is_some() && !self.interrupt(Duration::from_secs(150)) {
            eprintln!("mica up did not stop cleanly:\n{}", self.log_tail(40));
        }
    }
}

/// The `openstack` CLI with one identity.
#[derive(Clone)]
pub struct Cli {
    pub env: BTreeMap<String, String>,
}

impl Cli {
    /// The CLI as another user (password authentication, no clouds.yaml).
    pub fn as_user(auth_url: &str, user: &str, password: &str, project: &str) -> Cli {
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("OS_AUTH_URL", auth_url),
            ("OS_USERNAME", user),
            ("OS_PASSWORD", password),
            ("OS_PROJECT_NAME", project),
            ("OS_USER_DOMAIN_ID", "default"),
            ("OS_PROJECT_DOMAIN_ID", "default"),
            ("OS_IDENTITY_API_VERSION", "3"),
        ] {
            env.insert(k.to_owned(), v.to_owned());
        }
        Cli { env }
    }

    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(mica_tests::venv_bin("openstack"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .envs(&self.env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "openstack {} failed: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `security group rule create --ingress --protocol icmp <group>`:
    /// pings allowed in.
    pub fn allow_ping(&self, group: &str) {
        self.ok(&[
            "security",
            "group",
            "rule",
            "create",
            "--ingress",
            "--protocol",
            "icmp",
            group,
        ]);
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-f", "json"]);
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// A server's status, OS-EXT-STS fields included.
    pub fn server(&self, name: &str) -> Value {
        self.json(&["server", "show", name])
    }

    /// Waits until the server has `status` and no task.
    pub fn wait_status(&self, name: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.server(name);
            let task = s["OS-EXT-STS:task_state"].clone();
            if s["status"] == status && (task.is_null() || task == "") {
                return s;
            }
            assert!(
                s["status"] != "ERROR" || status == "ERROR",
                "{name} went to ERROR: {s}"
            );
            assert!(
                Instant::now() < deadline,
                "{name} not {status} after {timeout:?}: {s}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The first IPv4 address of a server (`addresses` of `server show`).
pub fn ip_of(server: &Value) -> String {
    let addrs = &server["addresses"];
    // openstackclient prints {"net": ["10.0.0.2"]} (or a string in old ones).
    let text = addrs.to_string();
    let re_start = text
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or_else(|| panic!("no address in {addrs}"));
    text[re_start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect()
}
