//! The browser tests' pieces: headless Debian chromium driven by
//! playwright-core (`tests/browser/console.mjs`) on Mica's console page over
//! the noVNC library, all installed by `make setup` (`tests/setup/web.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The noVNC library's folder, when chromium, playwright-core and noVNC are
/// all installed; else what is missing.
pub fn novnc_dir() -> Result<PathBuf, String> {
    let cache = crate::cache_dir();
    for p in [
        PathBuf::from("/usr/bin/chromium"),
        cache.join("node/node_modules/playwright-core/package.json"),
        cache.join("novnc/core/rfb.js"),
    ] {
        if !p.exists() {
            return Err(format!("{} is missing (make setup)", p.display()));
        }
    }
    Ok(cache.join("novnc"))
}

/// [`novnc_dir`], or `None` after saying why the test is skipped; panics
/// instead when `MICA_REQUIRE_BROWSER` is set (CI sets it).
pub fn required() -> Option<PathBuf> {
    match novnc_dir() {
        Ok(d) => Some(d),
        Err(why) => {
            assert!(
                std::env::var("MICA_REQUIRE_BROWSER").is_err(),
                "MICA_REQUIRE_BROWSER is set and {why}"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// Opens a console page (`url`) in headless chromium, saves a screenshot to
/// `shot` and answers the driver's report (noVNC loaded, connection state,
/// canvas size and non-black pixels). Blocking, up to `timeout_ms` for the
/// page to connect.
pub fn open_console(url: &str, shot: &Path, timeout_ms: u32) -> serde_json::Value {
    let script = crate::repo_root().join("tests/browser/console.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(url)
        .arg(shot)
        .arg(timeout_ms.to_string())
        .output()
        .expect("node (make setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Keeps a screenshot under `target/test-artifacts/<name>` for a person to
/// look at; answers where.
pub fn keep_artifact(shot: &Path, name: &str) -> PathBuf {
    let dir = crate::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let keep = dir.join(name);
    std::fs::copy(shot, &keep).unwrap();
    keep
}
