//! Mica's test harness.
//!
//! - [`artifacts`]: where the guest kernel, guest images and nested-host files are
//!   (built by `make setup` into `~/.cache/mica`), and the stub guest.
//! - [`nested`]: the nested test host, a QEMU microVM on QEMU's software CPU whose
//!   own kernel offers a real `/dev/kvm`; every test with a real Linux guest runs
//!   its commands there.
//! - [`browser`]: the console page in headless chromium (noVNC).
//! - [`netns`]: two network namespaces joined by a veth pair (a guest and its gateway).
//! - [`require`]: the `MICA_REQUIRE_KVM` rule: in CI a missing prerequisite fails
//!   the test; elsewhere the test says why it is skipped.

pub mod artifacts;
pub mod browser;
pub mod nested;
pub mod netns;

/// Where `make setup` keeps what it installs and builds: `$MICA_CACHE`, or
/// `~/.cache/mica`.
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("MICA_CACHE").map_or_else(
        || std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/mica"),
        std::path::PathBuf::from,
    )
}

/// Whether the environment insists that KVM-dependent tests run (CI sets
/// `MICA_REQUIRE_KVM=1`).
pub fn kvm_required() -> bool {
    std::env::var("MICA_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

/// Checks a prerequisite of a test. Returns `true` when the test can go on. When
/// it can't: panics if `MICA_REQUIRE_KVM=1`, otherwise prints why and returns
/// `false` so the caller returns early.
#[must_use]
pub fn require(what: &str, available: Result<(), String>) -> bool {
    match available {
        Ok(()) => true,
        Err(why) if kvm_required() => {
            panic!("MICA_REQUIRE_KVM=1 and {what} is unavailable: {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED: {what} is unavailable: {why} (set MICA_REQUIRE_KVM=1 to fail instead)"
            );
            false
        }
    }
}

/// The repository's root folder.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A program of the pinned Python venv `make setup` makes
/// (`~/.cache/mica/venv/bin/<name>`, or under `MICA_CACHE`): `openstack`,
/// `nova`. Panics with what to run when it is missing.
pub fn venv_bin(name: &str) -> std::path::PathBuf {
    let p = cache_dir().join("venv/bin").join(name);
    assert!(p.exists(), "{} is missing: run `make setup`", p.display());
    p
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}
