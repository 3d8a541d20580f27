//! `tests/setup/packages.sh`, the install-and-verify step of `make setup`:
//! - its check, run against this machine with one command hidden, fails and
//!   names the package that provides it (and passes with nothing hidden);
//! - in a scratch world (a stand-in apt-get and dpkg-query over a folder, so no
//!   real package is touched), it installs the whole set in one transaction, and
//!   when a package of the set is gone after installing, it notices and repairs it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    mica_tests::repo_root().join("tests/setup/packages.sh")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `packages.sh --check` with PATH set to `path` alone.
fn check_on_path(path: &Path) -> Output {
    Command::new("bash")
        .arg(script())
        .arg("--check")
        .env("PATH", path)
        .output()
        .unwrap()
}

/// The folders of this process's PATH (and the usual ones).
fn path_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(d.into());
        }
    }
    dirs
}

/// A folder of links to every command on PATH except `hidden`.
fn path_without(dir: &Path, hidden: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for d in path_dirs() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name_str = name.to_string_lossy();
            if hidden.contains(&name_str.as_ref()) || dir.join(&name).exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), dir.join(&name));
        }
    }
    dir.to_path_buf()
}

/// The table's rows: (package, provides).
fn table() -> Vec<(String, Vec<String>)> {
    let out = Command::new("bash")
        .arg(script())
        .arg("--table")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let pkg = f.next().unwrap().to_owned();
            let _min = f.next().unwrap();
            (pkg, f.map(str::to_owned).collect())
        })
        .collect()
}

#[test]
fn the_check_names_the_package_of_a_hidden_command() {
    let rows = table();
    let (pkg, _) = rows
        .iter()
        .find(|(_, provides)| provides.iter().any(|p| p == "qemu-img"))
        .expect("a package provides qemu-img");
    assert_eq!(pkg, "qemu-utils");

    // With everything visible, this machine (set up by `make setup`) passes.
    let tmp = tempfile::tempdir().unwrap();
    let all = path_without(&tmp.path().join("all"), &[]);
    let out = check_on_path(&all);
    if !out.status.success() {
        // Not set up: only a hard failure where the suite must be complete.
        let what: Result<(), String> = Err(format!("this machine is not set up: {}", text(&out)));
        if !mica_tests::require("a machine set up by `make setup`", what) {
            return;
        }
    }

    for (hidden, package) in [
        ("qemu-img", "qemu-utils"),
        ("nft", "nftables"),
        ("socat", "socat"),
    ] {
        let bin = path_without(&tmp.path().join(format!("without-{hidden}")), &[hidden]);
        let out = check_on_path(&bin);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("packages: {package}: installed"))
                && stderr.contains(&format!("{hidden} is missing"))
                && stderr.contains(&format!("apt-get install {package}")),
            "the failure does not name {package} for {hidden}:\n{t}"
        );
        // Only that package fails.
        assert_eq!(stderr.lines().count(), 1, "{t}");
    }

    // A command that is there but does not run fails too (a binary whose
    // libraries a conflicting install took away).
    let broken = path_without(&tmp.path().join("broken"), &["qemu-img"]);
    let fake = broken.join("qemu-img");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = check_on_path(&broken);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("qemu-utils: installed"),
        "{}",
        text(&out)
    );
}

/// A stand-in apt-get over a scratch world: `install` marks packages installed
/// and creates what the table says they provide. The first transaction ends
/// the way the one on a fresh machine did: the newly installed QEMU's
/// dependencies removed qemu-utils again.
const FAKE_APT: &str = r#"#!/bin/bash
set -euo pipefail
w=$FAKE_WORLD
case "$1" in
update) echo update >>"$w/apt.log"; exit 0 ;;
install) shift ;;
*) echo "fake apt-get: $1?" >&2; exit 2 ;;
esac
reinstall=0
pkgs=()
for a in "$@"; do
    case "$a" in --reinstall) reinstall=1 ;; -*) ;; *) pkgs+=("$a") ;; esac
done
echo "install reinstall=$reinstall ${pkgs[*]}" >>"$w/apt.log"
table=$(bash "$PACKAGES_SH" --table)
provide() {
    while read -r p min provides; do
        [ "$p" = "$1" ] || continue
        [ "$min" = - ] && min=1.0
        echo "$min" >"$w/installed/$p"
        for x in $provides; do
            if [ "${x:0:1}" = / ]; then
                mkdir -p "$(dirname "$w/root$x")"; touch "$w/root$x"
            else
                printf '#!/bin/sh\nexit 0\n' >"$w/bin/$x"; chmod +x "$w/bin/$x"
            fi
        done
    done <<<"$table"
}
for p in "${pkgs[@]}"; do
    if [ -e "$w/installed/$p" ] && [ $reinstall = 0 ]; then continue; fi
    provide "$p"
done
if [ ! -e "$w/conflicted" ]; then
    touch "$w/conflicted"
    echo "Removing qemu-utils" >&2
    rm -f "$w/installed/qemu-utils" "$w/bin/qemu-img" "$w/bin/qemu-nbd"
fi
"#;

/// A stand-in dpkg-query: `-W -f=… PACKAGE` from the scratch world.
const FAKE_DPKG_QUERY: &str = r#"#!/bin/bash
pkg=${!#}
f="$FAKE_WORLD/installed/$pkg"
[ -e "$f" ] || exit 1
echo "ii  $(cat "$f")"
"#;

#[test]
fn setup_installs_the_whole_set_at_once_and_repairs_what_a_later_step_removed() {
    let rows = table();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    for d in ["installed", "bin", "root", "tools"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    // Nothing the table provides is visible but what the fake installs.
    let provided: Vec<&str> = rows
        .iter()
        .flat_map(|(_, p)| p.iter().map(String::as_str))
        .filter(|p| !p.starts_with('/'))
        .collect();
    // (npm is in the table only where the machine has none.)
    let mut hidden = provided.clone();
    hidden.push("npm");
    let tools = path_without(&w.join("tools"), &hidden);
    for (name, body) in [("apt-get", FAKE_APT), ("dpkg-query", FAKE_DPKG_QUERY)] {
        let p = w.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // npm present (a stand-in), so the table is the same list the fake reads.
    std::fs::write(w.join("bin/npm"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(w.join("bin/npm"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let path = std::env::join_paths([w.join("bin"), tools]).unwrap();
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("PATH", &path)
            .env("FAKE_WORLD", w)
            .env("PACKAGES_SH", script())
            .env("MICA_SETUP_APT", w.join("apt-get"))
            .env("MICA_SETUP_DPKG_QUERY", w.join("dpkg-query"))
            .env("MICA_SETUP_ROOT", w.join("root"))
            .env("MICA_SETUP_NO_BACKPORTS", "1")
            .output()
            .unwrap()
    };

    // Nothing installed: the check fails for every package.
    let out = run(&["--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        rows.len(),
        "{}",
        text(&out)
    );

    let out = run(&[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("packages: qemu-utils: not installed"), "{t}");
    assert!(t.contains("repaired and verified"), "{t}");
    assert!(w.join("bin/qemu-img").exists(), "{t}");

    // The first transaction asked for the whole set, not only what was missing.
    let log = std::fs::read_to_string(w.join("apt.log")).unwrap();
    let installs: Vec<&str> = log.lines().filter(|l| l.starts_with("install")).collect();
    let first: Vec<&str> = installs[0].split_whitespace().skip(2).collect();
    for (pkg, _) in &rows {
        assert!(
            first.contains(&pkg.as_str()),
            "{pkg} missing from the first transaction: {log}"
        );
    }
    // The repair asked for the whole set again (qemu-utils with it).
    assert!(installs.len() >= 2, "{log}");
    assert!(
        installs[1].split_whitespace().any(|p| p == "qemu-utils"),
        "{log}"
    );

    // Now the check passes, and setup again is a no-op (no apt at all).
    let out = run(&["--check"]);
    assert!(out.status.success(), "{}", text(&out));
    let before = std::fs::read_to_string(w.join("apt.log")).unwrap();
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(w.join("apt.log")).unwrap(), before);
}
