//! The external programs a process of Mica runs, checked once when it starts:
//! a missing one is a clear error naming its Debian package, before any work is
//! half done (rather than a build failing later with "No such file or
//! directory"). `tests/setup/packages.sh` installs and checks the same
//! packages on a development or CI machine.

use std::path::{Path, PathBuf};

/// A program and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// What is run: a name looked up on PATH, or a path.
    pub name: String,
    /// The Debian package that provides it.
    pub package: &'static str,
    /// What Mica needs it for (said in the error).
    pub purpose: &'static str,
}

impl Program {
    pub fn new(name: &str, package: &'static str, purpose: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            package,
            purpose,
        }
    }
}

/// What a compute agent with the VMM backend runs: (name, package, purpose).
const AGENT: [(&str, &str, &str); 7] = [
    (
        "qemu-img",
        "qemu-utils",
        "converting qcow2 images to raw disks",
    ),
    ("ip", "iproute2", "taps, bridges and addresses"),
    ("nft", "nftables", "security groups"),
    ("dnsmasq", "dnsmasq-base", "DHCP for tenant networks"),
    ("mkfs.ext4", "e2fsprogs", "ephemeral disks"),
    ("mkfs.vfat", "dosfstools", "vfat ephemeral disks"),
    ("mkswap", "util-linux", "swap disks"),
];

/// The agent's programs, with `qemu-img` and `dnsmasq` as configured
/// ([images] qemu_img, [network] dnsmasq).
pub fn agent_programs(qemu_img: &str, dnsmasq: &str) -> Vec<Program> {
    AGENT
        .iter()
        .map(|&(name, package, purpose)| {
            let name = match name {
                "qemu-img" => qemu_img,
                "dnsmasq" => dnsmasq,
                other => other,
            };
            Program::new(name, package, purpose)
        })
        .collect()
}

/// The programs of `list` that cannot be found (or are not executable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct Missing(pub Vec<Program>);

fn describe(missing: &[Program]) -> String {
    let each: Vec<String> = missing
        .iter()
        .map(|p| {
            format!(
                "{} (Debian package {}, for {})",
                p.name, p.package, p.purpose
            )
        })
        .collect();
    let mut packages: Vec<&str> = missing.iter().map(|p| p.package).collect();
    packages.dedup();
    format!(
        "missing program{}: {}; install with `apt-get install {}` (or run `make setup`)",
        if missing.len() == 1 { "" } else { "s" },
        each.join(", "),
        packages.join(" ")
    )
}

/// Where `name` would be run from: itself if it has a slash, else the first
/// executable file of that name on `path`.
pub fn locate(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// Checks that every program of `list` can be run, on this process's PATH.
pub fn check(list: &[Program]) -> Result<(), Missing> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    check_on(list, &path)
}

/// [`check`] on a given PATH.
pub fn check_on(list: &[Program], path: &std::ffi::OsStr) -> Result<(), Missing> {
    let missing: Vec<Program> = list
        .iter()
        .filter(|p| locate(&p.name, path).is_none())
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_missing_program_is_named_with_its_package() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ip", "nft", "dnsmasq", "mkfs.ext4", "mkfs.vfat", "mkswap"] {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // qemu-img is there but not executable: it does not count.
        std::fs::write(dir.path().join("qemu-img"), "").unwrap();
        let list = agent_programs("qemu-img", "dnsmasq");
        let err = check_on(&list, dir.path().as_os_str()).unwrap_err();
        assert_eq!(err.0.len(), 1);
        let text = err.to_string();
        assert!(
            text.contains("qemu-img (Debian package qemu-utils")
                && text.contains("apt-get install qemu-utils"),
            "{text}"
        );

        let p = dir.path().join("qemu-img");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_on(&list, dir.path().as_os_str()), Ok(()));

        // A configured absolute path is checked as it is.
        let list = agent_programs("/nonexistent/qemu-img", "dnsmasq");
        let err = check_on(&list, dir.path().as_os_str()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/qemu-img"), "{err}");
    }

    #[test]
    fn several_missing_programs_are_all_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_on(
            &agent_programs("qemu-img", "dnsmasq"),
            dir.path().as_os_str(),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), AGENT.len());
        let text = err.to_string();
        assert!(text.starts_with("missing programs: "), "{text}");
        assert!(
            text.contains("apt-get install qemu-utils iproute2 nftables dnsmasq-base e2fsprogs dosfstools util-linux"),
            "{text}"
        );
    }
}
