//! The nested test host: real KVM on a machine without hardware virtualization.
//!
//! This machine's `/dev/kvm` may be a software hypervisor that cannot run a Linux
//! guest kernel. QEMU's software CPU, however, emulates AMD SVM well enough that a
//! Debian kernel inside it ("L1") loads `kvm-amd` and offers a genuine `/dev/kvm`,
//! where Mica's VMM boots real guests ("L2").
//!
//! ```text
//!  test process ──spawns──► qemu-system-x86_64 (TCG, -cpu EPYC, microvm)
//!      │                        │ virtio-9p "hostroot": this machine's /, read-only,
//!      │                        │   under a tmpfs overlay = L1's whole userland
//!      │                        │ virtio-9p "job": a folder per session
//!      └── jobs/<id>/cmd ──────►│ L1's init (tests/nested/init) runs each job,
//!          ◄── stdout,stderr,rc │   chrooted into that overlay
//! ```
//!
//! Because L1 sees this machine's files at the same paths, a job can run any
//! binary cargo built and read any artifact in `~/.cache/mica` directly.

use std::fs;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::artifacts::NestedArtifacts;

const POLL: Duration = Duration::from_millis(50);

/// How to start a nested host.
#[derive(Debug, Clone)]
pub struct NestedOptions {
    /// A name for logs.
    pub name: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// How long L1 may take to become ready.
    pub boot_timeout: Duration,
    /// Ports on this machine's loopback that L1 reaches as `10.0.2.100:<port>`
    /// (QEMU user networking with `restrict=on`: nothing else is reachable).
    pub host_ports: Vec<u16>,
    /// `(host port on 127.0.0.1, L1 port)` forwards into L1.
    pub forwards: Vec<(u16, u16)>,
    /// Share the machine-wide lock with other nested hosts that share it
    /// (a test that needs two compute hosts at once); hosts that do not
    /// share it still run alone.
    pub shared_lock: bool,
}

impl NestedOptions {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            memory_mib: 2048,
            cpus: default_cpus(),
            boot_timeout: Duration::from_secs(120),
            host_ports: Vec::new(),
            forwards: Vec::new(),
            shared_lock: false,
        }
    }
}

/// L1's vCPUs: 1 (`MICA_NESTED_CPUS` overrides). With 2, QEMU's emulated
/// SVM stalls L1 under sustained guest I/O (its vCPUs halt with interrupts
/// left undelivered); with 1 it has not (tests/nested/README.md).
fn default_cpus() -> u32 {
    std::env::var("MICA_NESTED_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The file in a nested host's shared folder that holds QEMU's pid.
pub const QEMU_PID_FILE: &str = "qemu.pid";

/// Kills the QEMU of the nested host whose shared folder is `shared_dir`,
/// if it still runs: for a test whose process that owned the host (`mica
/// up`, say) had to be killed and so could not power L1 off. Answers
/// whether there was one to kill.
pub fn kill_orphaned_qemu(shared_dir: &Path) -> bool {
    let Ok(pid) = fs::read_to_string(shared_dir.join(QEMU_PID_FILE)) else {
        return false;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return false;
    };
    // Only that QEMU: its command line names the same shared folder.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !cmdline.contains("qemu-system") || !cmdline.contains(&*shared_dir.to_string_lossy()) {
        return false;
    }
    // SAFETY: a plain kill(2) of a pid checked just above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    true
}

/// The address at which L1 reaches this machine's loopback ports listed in
/// [`NestedOptions::host_ports`].
pub const HOST_FROM_L1: &str = "10.0.2.100";

/// What a job printed and how it ended.
#[derive(Debug, Clone)]
pub struct JobOutput {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl JobOutput {
    /// Panics with the whole output unless the job exited 0.
    #[track_caller]
    pub fn expect_success(self, what: &str) -> Self {
        assert_eq!(
            self.code, 0,
            "{what} failed with exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// A job started with [`NestedHost::spawn`].
pub struct Job<'a> {
    host: &'a NestedHost,
    dir: PathBuf,
}

impl Job<'_> {
    /// Waits for the job to end.
    pub fn wait(&self, timeout: Duration) -> Result<JobOutput> {
        wait_job(&self.dir, timeout, || self.host.check_alive())
    }

    /// Whether the job has ended.
    pub fn is_done(&self) -> bool {
        self.dir.join("rc").exists()
    }

    /// What the job has written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        read_lossy(&self.dir.join("stdout"))
    }

    /// Waits until the job's stdout contains `needle`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout_so_far().contains(needle) {
                return Ok(());
            }
            if self.dir.join("rc").exists() {
                bail!(
                    "job ended before printing {needle:?}:\n{}\n{}",
                    self.stdout_so_far(),
                    read_lossy(&self.dir.join("stderr"))
                );
            }
            self.host.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{needle:?} not printed within {timeout:?}:\n{}",
                    self.stdout_so_far()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// A running nested host. Dropping it powers L1 off (and kills QEMU if needed).
pub struct NestedHost {
    /// Held for the host's life: one nested host at a time on this machine (each
    /// takes both cores), across test binaries, worktrees and CI runs.
    _lock: fs::File,
    name: String,
    child: Child,
    dir: tempfile::TempDir,
    next_job: AtomicU64,
    ready: String,
    boot_time: Duration,
    watchdog: Option<Watchdog>,
}

impl NestedHost {
    /// Checks that the nested host can be started here.
    pub fn available() -> Result<(), String> {
        which("qemu-system-x86_64").map_err(|e| e.to_string())?;
        NestedArtifacts::locate().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Boots L1 and waits until it runs jobs.
    pub fn boot(opts: NestedOptions) -> Result<Self> {
        let qemu = which("qemu-system-x86_64")?;
        let art = NestedArtifacts::locate()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("mica-nested-{}-", opts.name))
            .tempdir()?;
        fs::create_dir(dir.path().join("jobs"))?;
        let console = dir.path().join("console.log");

        let append = format!(
            "console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz={} mica.modules={} {}",
            host_tsc_khz()?,
            art.modules().display(),
            std::env::var("MICA_NESTED_APPEND").unwrap_or_default()
        );
        // Overridable for measuring the host's stability (tests/nested/README.md).
        let accel =
            std::env::var("MICA_NESTED_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".into());
        let cpu = std::env::var("MICA_NESTED_CPU").unwrap_or_else(|_| "EPYC".into());
        let mut cmd = Command::new(qemu);
        cmd.args(["-accel", &accel, "-M", "microvm", "-cpu", &cpu])
            .args(["-m", &opts.memory_mib.to_string()])
            .args(["-smp", &opts.cpus.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-chardev")
            .arg(format!("file,id=con,path={}", console.display()))
            .args(["-serial", "chardev:con"])
            .arg("-kernel")
            .arg(art.vmlinux())
            .arg("-initrd")
            .arg(art.initramfs())
            .args(["-append", &append])
            .args([
                "-fsdev",
                "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device",
                "virtio-9p-device,fsdev=hostroot,mount_tag=hostroot",
            ])
            .arg("-fsdev")
            .arg(format!(
                "local,id=job,path={},security_model=none,multidevs=remap",
                dir.path().display()
            ))
            .args(["-device", "virtio-9p-device,fsdev=job,mount_tag=job"])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.path().join("qmp.sock").display()
            ));
        if !opts.host_ports.is_empty() || !opts.forwards.is_empty() {
            let mut netdev = String::from("user,id=n0,net=10.0.2.0/24,restrict=on");
            for port in &opts.host_ports {
                // `cmd:` runs one socat per connection. (A `tcp:` target is a
                // single chardev connection that every guest connection
                // shares, so a second connection corrupts the first's stream.)
                netdev.push_str(&format!(
                    ",guestfwd=tcp:{HOST_FROM_L1}:{port}-cmd:socat STDIO TCP:127.0.0.1:{port}"
                ));
            }
            for (host, guest) in &opts.forwards {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            cmd.args(["-netdev", &netdev])
                .args(["-device", "virtio-net-device,netdev=n0"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);

        let lock = machine_lock(opts.shared_lock)?;
        let started = Instant::now();
        let child = cmd.spawn().context("starting qemu-system-x86_64")?;
        // For whoever must clean up after this process if it is killed
        // before it can power L1 off ([`kill_orphaned_qemu`]).
        fs::write(dir.path().join(QEMU_PID_FILE), child.id().to_string())?;
        let mut host = NestedHost {
            _lock: lock,
            name: opts.name,
            child,
            dir,
            next_job: AtomicU64::new(1),
            ready: String::new(),
            boot_time: Duration::ZERO,
            watchdog: None,
        };
        let deadline = started + opts.boot_timeout;
        let ready = host.dir.path().join("ready");
        let failed = host.dir.path().join("failed");
        loop {
            if ready.exists() {
                host.ready = read_lossy(&ready).trim().to_string();
                host.boot_time = started.elapsed();
                host.watchdog = Some(Watchdog::start(
                    host.child.id(),
                    host.dir.path().to_path_buf(),
                ));
                return Ok(host);
            }
            if failed.exists() {
                bail!(
                    "nested host failed to start: {}\n{}",
                    read_lossy(&failed),
                    host.console_log()
                );
            }
            host.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "nested host not ready after {:?}\n--- console ---\n{}",
                    opts.boot_timeout,
                    host.console_log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// L1's readiness line, e.g. `kernel=6.1.0-… kvm=yes cpus=2`.
    pub fn ready_line(&self) -> &str {
        &self.ready
    }

    /// Time from starting QEMU until L1 ran jobs.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The session's shared folder (L1 sees it as `/mica-job`).
    pub fn shared_dir(&self) -> &Path {
        self.dir.path()
    }

    /// L1's serial console so far.
    pub fn console_log(&self) -> String {
        read_lossy(&self.dir.path().join("console.log"))
    }

    /// Starts a bash script in L1 (its working folder is the job's own folder).
    pub fn spawn(&self, script: &str) -> Result<Job<'_>> {
        self.check_alive()?;
        let id = self.next_job.fetch_add(1, Ordering::SeqCst);
        let dir = start_job(self.dir.path(), &id.to_string(), script)?;
        Ok(Job { host: self, dir })
    }

    /// Runs a bash script in L1 and waits for it (up to 10 minutes).
    pub fn run(&self, script: &str) -> Result<JobOutput> {
        self.run_timeout(script, Duration::from_secs(600))
    }

    /// Runs a bash script in L1 and waits for it.
    pub fn run_timeout(&self, script: &str, timeout: Duration) -> Result<JobOutput> {
        self.spawn(script)?.wait(timeout)
    }

    /// Runs a QMP command without arguments (`stop`, `cont`, `inject-nmi`, …)
    /// on L1's QEMU.
    pub fn qmp(&self, command: &str) -> Result<()> {
        qmp(&self.dir.path().join("qmp.sock"), command)
    }

    /// What the stall watchdog did so far (one line per NMI it injected).
    pub fn watchdog_log(&self) -> String {
        read_lossy(&self.dir.path().join("watchdog.log"))
    }

    /// QEMU's pid.
    pub fn qemu_pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether QEMU has exited, and how; reaps it, so a dead L1 never stays a
    /// zombie. `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// How many times in a row the stall watchdog has had to kick L1 (0
    /// while L1 uses CPU): a supervisor gives up on an L1 that stays stalled.
    pub fn stall_kicks(&self) -> u32 {
        self.watchdog
            .as_ref()
            .map_or(0, |w| w.kicks.load(Ordering::Relaxed))
    }

    /// Kills QEMU (a hung L1 that must be restarted).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `n` lines of L1's console.
    pub fn console_tail(&self, n: usize) -> String {
        let log = self.console_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How long ago L1's job loop last wrote its heartbeat (about once a
    /// second while L1 runs); `None` before the first one.
    pub fn heartbeat_age(&self) -> Option<Duration> {
        heartbeat_age(self.dir.path())
    }

    fn check_alive(&self) -> Result<()> {
        // SAFETY: kill(pid, 0) only checks that the process exists.
        let alive = unsafe { libc::kill(self.child.id() as libc::pid_t, 0) } == 0;
        let zombie = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true);
        if !alive || zombie {
            bail!(
                "the nested host's QEMU exited\n--- console ---\n{}",
                self.console_log()
            );
        }
        if let Some(age) = self.heartbeat_age()
            && age > L1_STALLED_AFTER
        {
            let lapic = qmp_human(&self.dir.path().join("qmp.sock"), "info lapic")
                .unwrap_or_else(|e| format!("(info lapic: {e})"));
            bail!(
                "the nested host stopped running: its job loop's last heartbeat is {} s old \
                 (QEMU's emulated SVM stalled L1: see tests/nested/README.md)\n\
                 --- L1's local APIC ---\n{lapic}\n--- console ---\n{}",
                age.as_secs(),
                self.console_tail(30)
            );
        }
        Ok(())
    }

    fn keep_log(&self) {
        let logs = crate::repo_root().join("target").join("nested-logs");
        if fs::create_dir_all(&logs).is_ok() {
            let _ = fs::copy(
                self.dir.path().join("console.log"),
                logs.join(format!("{}-{}.log", self.name, self.child.id())),
            );
        }
    }
}

impl Drop for NestedHost {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        let _ = fs::write(self.dir.path().join("poweroff"), "");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        if let Some(mut err) = self.child.stderr.take() {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let real: Vec<&str> = s
                .lines()
                .filter(|l| !l.contains("TCG doesn't support requested feature"))
                .collect();
            if !real.is_empty() {
                eprintln!("qemu ({}): {}", self.name, real.join("\n"));
            }
        }
        self.keep_log();
    }
}

/// Watches for L1 stalling: on a loaded machine the nested host (QEMU's
/// software CPU emulating SVM) has been seen to stop with every vCPU halted and
/// no timer interrupt ever arriving again. A live L1 never idles completely (its
/// job loop wakes 20 times a second), so a QEMU that used no CPU for several
/// seconds is stalled: the watchdog then injects an NMI through QMP, which makes
/// L1's idle loop run again and re-arm its timer. Each kick is logged to
/// `watchdog.log` in the session folder and on stderr.
struct Watchdog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Kicks since L1 last used CPU.
    kicks: std::sync::Arc<std::sync::atomic::AtomicU32>,
    thread: std::thread::JoinHandle<()>,
}

impl Watchdog {
    const PERIOD: Duration = Duration::from_secs(2);
    /// Seconds without CPU use (or heartbeat) that mean "stalled".
    const STALLED_AFTER: u32 = 4;
    /// A heartbeat this old means L1's job loop stopped, even if QEMU still
    /// uses some CPU (its own threads).
    const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

    fn start(pid: u32, dir: PathBuf) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let kicks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let kicked = kicks.clone();
        let thread = std::thread::spawn(move || {
            let mut last = cpu_ticks(pid);
            let mut idle_periods = 0;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Self::PERIOD);
                let Some(now) = cpu_ticks(pid) else { return };
                let beat_stale = heartbeat_age(&dir).is_some_and(|a| a > Self::HEARTBEAT_STALE);
                if last.is_some_and(|l| now <= l) || beat_stale {
                    idle_periods += 1;
                } else {
                    idle_periods = 0;
                    kicked.store(0, Ordering::Relaxed);
                }
                last = Some(now);
                if idle_periods * Self::PERIOD.as_secs() as u32 >= Self::STALLED_AFTER {
                    kicked.fetch_add(1, Ordering::Relaxed);
                    let result = qmp_inject_nmi(&dir.join("qmp.sock"));
                    let line = format!(
                        "L1 {} for {} s: stalled; injected an NMI ({})\n",
                        if beat_stale {
                            "ran no job loop"
                        } else {
                            "used no CPU"
                        },
                        idle_periods * Self::PERIOD.as_secs() as u32,
                        match &result {
                            Ok(()) => "ok".to_string(),
                            Err(e) => format!("failed: {e}"),
                        }
                    );
                    eprint!("nested watchdog: {line}");
                    let _ = fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join("watchdog.log"))
                        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
                    idle_periods = 0;
                }
            }
        });
        Watchdog {
            stop,
            kicks,
            thread,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = &stat[stat.rfind(") ")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A heartbeat older than this fails the host's jobs ([`NestedHost`]'s
/// liveness check): far longer than a loaded machine delays L1's job loop.
const L1_STALLED_AFTER: Duration = Duration::from_secs(45);

fn heartbeat_age(dir: &Path) -> Option<Duration> {
    let modified = fs::metadata(dir.join("heartbeat")).ok()?.modified().ok()?;
    Some(modified.elapsed().unwrap_or_default())
}

fn qmp_inject_nmi(socket: &Path) -> Result<()> {
    qmp(socket, "inject-nmi")
}

/// Runs one QMP command (without arguments) on the QEMU behind `socket`.
fn qmp(socket: &Path, command: &str) -> Result<()> {
    qmp_exec(socket, &format!("{{\"execute\":\"{command}\"}}")).map(|_| ())
}

/// A human monitor command (`info lapic`, `info registers -a`) through QMP;
/// answers its text.
fn qmp_human(socket: &Path, command: &str) -> Result<String> {
    let request = serde_json::json!({
        "execute": "human-monitor-command",
        "arguments": {"command-line": command},
    });
    let answer = qmp_exec(socket, &request.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&answer)?;
    Ok(v["return"].as_str().unwrap_or_default().to_owned())
}

/// Runs one QMP request (a JSON object) after the capabilities handshake;
/// answers the line with its `return`.
fn qmp_exec(socket: &Path, request: &str) -> Result<String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // greeting
    for request in ["{\"execute\":\"qmp_capabilities\"}", request] {
        writer.write_all(format!("{request}\n").as_bytes())?;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if line.contains("\"return\"") {
                break;
            }
            if line.contains("\"error\"") || line.is_empty() {
                bail!("QMP {request}: {}", line.trim());
            }
        }
    }
    Ok(line)
}

/// Takes the machine-wide nested-host lock (`$MICA_CACHE/nested.lock`, default
/// `~/.cache/mica`), waiting for whoever holds it.
fn machine_lock(shared: bool) -> Result<fs::File> {
    use std::os::fd::AsRawFd as _;
    let cache = crate::cache_dir();
    fs::create_dir_all(&cache)?;
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cache.join("nested.lock"))?;
    let how = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock on a descriptor we own; the lock is released when `file`
    // is closed.
    if unsafe { libc::flock(file.as_raw_fd(), how) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking nested.lock");
    }
    Ok(file)
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{program} not found in PATH (run `make setup`)")
}

/// The host's TSC frequency in kHz, which L1 needs as `tsc_early_khz=` (without
/// it L1 hangs about a third of the time after failing to calibrate against the
/// PIT).
fn host_tsc_khz() -> Result<u64> {
    let info = fs::read_to_string("/proc/cpuinfo")?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .context("no 'cpu MHz' in /proc/cpuinfo")?
        .trim()
        .parse()?;
    Ok((mhz * 1000.0) as u64)
}

/// Runs a bash script in an L1 that another process booted (e.g. the
/// compute host of `mica up`, whose job folder it names in its state), through
/// the same job folder protocol. Fails if `timeout` passes first.
pub fn run_in_job_folder(job_folder: &Path, script: &str, timeout: Duration) -> Result<JobOutput> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = format!(
        "x{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let dir = start_job(job_folder, &id, script)?;
    wait_job(&dir, timeout, || Ok(()))
}

/// Drops job `id` into `job_folder` (its script complete before `start`
/// appears). Returns the job's folder.
fn start_job(job_folder: &Path, id: &str, script: &str) -> Result<PathBuf> {
    let dir = job_folder.join("jobs").join(id);
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join("cmd"), script)?;
    fs::write(dir.join("start.tmp"), "")?;
    fs::rename(dir.join("start.tmp"), dir.join("start"))?;
    Ok(dir)
}

/// Waits for the job in `dir` to end, checking `alive` (L1 still there)
/// while it runs.
fn wait_job(dir: &Path, timeout: Duration, alive: impl Fn() -> Result<()>) -> Result<JobOutput> {
    let rc = dir.join("rc");
    let deadline = Instant::now() + timeout;
    while !rc.exists() {
        alive()?;
        if Instant::now() > deadline {
            bail!(
                "job {} did not finish within {timeout:?}\n--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
                dir.display(),
                read_lossy(&dir.join("stdout")),
                read_lossy(&dir.join("stderr"))
            );
        }
        std::thread::sleep(POLL);
    }
    Ok(JobOutput {
        stdout: read_lossy(&dir.join("stdout")),
        stderr: read_lossy(&dir.join("stderr")),
        code: read_lossy(&rc).trim().parse().unwrap_or(-1),
    })
}
