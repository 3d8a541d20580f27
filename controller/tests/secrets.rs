//! Every secret comes from the OS CSPRNG (issue 15, item 7): the code of
//! the controller, `mica up`, the RPC crate and the agent uses a
//! non-cryptographic generator only where the listed reason says why
//! predictability does no harm.

mod common;

use std::path::Path;

/// Files that may use `fastrand`, and why.
const ALLOWED: &[(&str, &str)] = &[
    (
        "controller/src/scheduler/mod.rs",
        "random choice among the best hosts",
    ),
    (
        "controller/src/scheduler/policy.rs",
        "random choice among the best hosts",
    ),
    (
        "controller/src/scheduler/weighers.rs",
        "ties broken at random",
    ),
    ("controller/rpc/src/backoff.rs", "reconnect jitter"),
    ("agent/src/sim.rs", "simulated delays and failures"),
    (
        "agent/src/images.rs",
        "name of a temporary file the agent creates exclusively",
    ),
    (
        "agent/src/store.rs",
        "name of a temporary file the agent creates exclusively",
    ),
];

/// Names of non-cryptographic generators.
const WEAK: &[&str] = &[
    "fastrand",
    "thread_rng",
    "SmallRng",
    "StdRng",
    "rand::random",
];

#[test]
fn secrets_come_from_the_os_csprng() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in [
        "controller/src",
        "controller/up/src",
        "controller/rpc/src",
        "agent/src",
    ] {
        common::rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found the sources: {}", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if ALLOWED.iter().any(|(a, _)| *a == rel) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests at the end of a file may use anything.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            if WEAK.iter().any(|w| line.contains(w)) {
                bad.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "non-cryptographic randomness outside the allowed files (use getrandom):\n{}",
        bad.join("\n")
    );
    // The allowed files still exist (a stale entry would hide a move).
    for (a, _) in ALLOWED {
        assert!(root.join(a).exists(), "{a} is gone: drop it from ALLOWED");
    }
}
