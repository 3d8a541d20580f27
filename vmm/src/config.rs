//! Loading and checking the VM configuration. Every error names the field at
//! fault, and everything is checked before the VMM creates anything.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use mica_vmm_api::{DisplayConfig, VmConfig};

use crate::arch::FRAMEBUFFER_MAX_SIZE;
use crate::devices::display::{BYTES_PER_PIXEL, MAX_SIDE, MIN_SIDE};

/// vCPUs a guest may have (the guest kernel's `CONFIG_NR_CPUS`).
pub const MAX_VCPUS: u32 = 32;
/// Smallest guest memory: room for the kernel at 16 MiB and its early allocations.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Disks plus NICs (each takes a virtio-mmio slot and an interrupt line).
pub const MAX_DISKS_AND_NICS: usize = 12;
/// Longest disk id: the virtio-blk serial field.
pub const MAX_DISK_ID_LEN: usize = 20;
/// Longest command line the user may give; the VMM keeps room for its own
/// parameters within the kernel's 2048 bytes.
pub const MAX_USER_CMDLINE: usize = 1900;
/// Linux's IFNAMSIZ minus the terminating NUL.
pub const MAX_TAP_NAME_LEN: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Reads, parses and checks a configuration file.
pub fn load(path: &Path) -> Result<VmConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = parse(&text).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })?;
    validate(&config)?;
    Ok(config)
}

/// Parses the JSON text; errors name the field (`disks[0].path: invalid type ...`).
pub fn parse(text: &str) -> Result<VmConfig, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// Checks the values of a parsed configuration, including the files it names.
pub fn validate(c: &VmConfig) -> Result<(), ConfigError> {
    if c.vcpus == 0 || c.vcpus > MAX_VCPUS {
        return Err(invalid(
            "vcpus",
            format!("must be between 1 and {MAX_VCPUS} (got {})", c.vcpus),
        ));
    }
    if c.memory_mib < MIN_MEMORY_MIB || c.memory_mib > MAX_MEMORY_MIB {
        return Err(invalid(
            "memory_mib",
            format!(
                "must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} (got {})",
                c.memory_mib
            ),
        ));
    }
    readable_file("kernel", &c.kernel)?;
    if let Some(initrd) = &c.initrd {
        readable_file("initrd", initrd)?;
    }
    if c.cmdline.len() > MAX_USER_CMDLINE {
        return Err(invalid(
            "cmdline",
            format!(
                "is {} bytes, at most {MAX_USER_CMDLINE} are allowed",
                c.cmdline.len()
            ),
        ));
    }
    if c.cmdline.bytes().any(|b| b == 0 || b == b'\n') {
        return Err(invalid("cmdline", "must not contain NUL or newline"));
    }

    if c.disks.len() + c.nics.len() > MAX_DISKS_AND_NICS {
        return Err(invalid(
            "disks",
            format!("at most {MAX_DISKS_AND_NICS} disks and NICs together"),
        ));
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, d) in c.disks.iter().enumerate() {
        let field = format!("disks[{i}]");
        if d.id.is_empty() || d.id.len() > MAX_DISK_ID_LEN {
            return Err(invalid(
                format!("{field}.id"),
                format!("must be 1 to {MAX_DISK_ID_LEN} bytes (got {:?})", d.id),
            ));
        }
        if let Some(first) = ids.insert(&d.id, i) {
            return Err(invalid(
                format!("{field}.id"),
                format!("duplicate id {:?} (also disks[{first}].id)", d.id),
            ));
        }
        disk_file(&format!("{field}.path"), &d.path, d.read_only)?;
    }

    let mut taps: HashMap<&str, usize> = HashMap::new();
    let mut macs: HashMap<[u8; 6], usize> = HashMap::new();
    let mut nic_ids: HashMap<String, usize> = HashMap::new();
    for (i, n) in c.nics.iter().enumerate() {
        let field = format!("nics[{i}]");
        let id = n.id_or_default(i);
        if id.is_empty() {
            return Err(invalid(format!("{field}.id"), "must not be empty"));
        }
        if let Some(first) = nic_ids.insert(id.clone(), i) {
            return Err(invalid(
                format!("{field}.id"),
                format!("duplicate id {id:?} (also nics[{first}])"),
            ));
        }
        if n.tap.is_empty() || n.tap.len() > MAX_TAP_NAME_LEN || n.tap.contains(['/', ' ', '\0']) {
            return Err(invalid(
                format!("{field}.tap"),
                format!(
                    "must be an interface name of 1 to {MAX_TAP_NAME_LEN} bytes (got {:?})",
                    n.tap
                ),
            ));
        }
        if let Some(first) = taps.insert(&n.tap, i) {
            return Err(invalid(
                format!("{field}.tap"),
                format!("duplicate tap {:?} (also nics[{first}].tap)", n.tap),
            ));
        }
        let mac = parse_mac(&n.mac).ok_or_else(|| {
            invalid(
                format!("{field}.mac"),
                format!("must be xx:xx:xx:xx:xx:xx (got {:?})", n.mac),
            )
        })?;
        if mac[0] & 1 != 0 {
            return Err(invalid(
                format!("{field}.mac"),
                format!("{} is a multicast address", n.mac),
            ));
        }
        if let Some(first) = macs.insert(mac, i) {
            return Err(invalid(
                format!("{field}.mac"),
                format!("duplicate MAC {} (also nics[{first}].mac)", n.mac),
            ));
        }
    }

    if let Some(log) = &c.serial.log {
        parent_exists("serial.log", log)?;
        if c.serial.log_max_bytes < 4096 {
            return Err(invalid(
                "serial.log_max_bytes",
                format!("must be at least 4096 (got {})", c.serial.log_max_bytes),
            ));
        }
    }
    if let Some(sock) = &c.serial.socket {
        parent_exists("serial.socket", sock)?;
        if Some(sock) == c.serial.log.as_ref() {
            return Err(invalid("serial.socket", "is the same path as serial.log"));
        }
    }
    if let Some(d) = &c.display {
        validate_display(c, d)?;
    }
    Ok(())
}

fn validate_display(c: &VmConfig, d: &DisplayConfig) -> Result<(), ConfigError> {
    for (field, v) in [("display.width", d.width), ("display.height", d.height)] {
        if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
            return Err(invalid(
                field,
                format!("must be between {MIN_SIDE} and {MAX_SIDE} pixels (got {v})"),
            ));
        }
    }
    let bytes = u64::from(d.width) * u64::from(d.height) * u64::from(BYTES_PER_PIXEL);
    if bytes > FRAMEBUFFER_MAX_SIZE {
        return Err(invalid(
            "display",
            format!(
                "{}x{} needs {bytes} bytes of framebuffer, at most {FRAMEBUFFER_MAX_SIZE} fit",
                d.width, d.height
            ),
        ));
    }
    if let Some(sock) = &d.vnc_socket {
        parent_exists("display.vnc_socket", sock)?;
        if Some(sock) == c.serial.socket.as_ref() || Some(sock) == c.serial.log.as_ref() {
            return Err(invalid(
                "display.vnc_socket",
                "is the same path as a serial console file",
            ));
        }
    }
    if let Some(addr) = d.vnc_tcp
        && !addr.ip().is_loopback()
    {
        return Err(invalid(
            "display.vnc_tcp",
            format!(
                "{addr} is not a loopback address: the VNC server has no authentication, \
                 so it listens on 127.0.0.0/8 or ::1 only (reach it through a proxy)"
            ),
        ));
    }
    Ok(())
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn readable_file(field: &str, path: &Path) -> Result<(), ConfigError> {
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(invalid(
            field,
            format!("{} is not a regular file", path.display()),
        ));
    }
    File::open(path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    Ok(())
}

fn disk_file(field: &str, path: &Path, read_only: bool) -> Result<(), ConfigError> {
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    let ft = meta.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(invalid(
            field,
            format!("{} is neither a file nor a block device", path.display()),
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    if ft.is_file() && meta.len() < 512 {
        return Err(invalid(
            field,
            format!(
                "{} is {} bytes, smaller than one sector",
                path.display(),
                meta.len()
            ),
        ));
    }
    Ok(())
}

fn parent_exists(field: &str, path: &Path) -> Result<(), ConfigError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(invalid(
            field,
            format!("folder {} does not exist", parent.display()),
        ));
    }
    if path.is_dir() {
        return Err(invalid(field, format!("{} is a folder", path.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("vmlinux"), b"not really a kernel").unwrap();
            std::fs::write(dir.path().join("disk.img"), vec![0u8; 4096]).unwrap();
            Self { dir }
        }
        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }
        fn json(&self, extra: &str) -> String {
            format!(
                r#"{{"vcpus": 2, "memory_mib": 256, "kernel": "{}"{extra}}}"#,
                self.path("vmlinux")
            )
        }
        fn check(&self, text: &str) -> Result<VmConfig, String> {
            let c = parse(text)?;
            validate(&c).map_err(|e| e.to_string())?;
            Ok(c)
        }
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let f = Files::new();
        let c = f.check(&f.json("")).unwrap();
        assert_eq!(c.vcpus, 2);
        assert!(c.rng && c.boot_timer);
        assert!(c.disks.is_empty() && c.serial.log.is_none());
        assert!(c.display.is_none());
        let c = f
            .check(&f.json(r#", "display": {"vnc_tcp": "127.0.0.1:5901"}"#))
            .unwrap();
        let d = c.display.unwrap();
        assert_eq!((d.width, d.height), (1024, 768));
        assert!(
            f.check(&f.json(r#", "display": {"vnc_tcp": "[::1]:5901"}"#))
                .is_ok()
        );
    }

    #[test]
    fn each_bad_config_names_its_field() {
        let f = Files::new();
        let disk = f.path("disk.img");
        let cases: Vec<(String, &str)> = vec![
            (
                r#"{"vcpus": 1, "memory_mib": 128}"#.into(),
                "missing field `kernel`",
            ),
            (f.json(r#", "colour": "blue""#), "unknown field `colour`"),
            (
                f.json("").replace("\"memory_mib\": 256", "\"memory_mib\": 0"),
                "memory_mib: must be between",
            ),
            (
                f.json("").replace("\"vcpus\": 2", "\"vcpus\": 33"),
                "vcpus: must be between 1 and 32",
            ),
            (
                f.json("").replace("\"vcpus\": 2", "\"vcpus\": \"two\""),
                "vcpus: invalid type",
            ),
            (
                f.json("").replace(&f.path("vmlinux"), "/nonexistent/vmlinux"),
                "kernel: /nonexistent/vmlinux: No such file",
            ),
            (
                f.json(r#", "disks": [{"id": "a", "path": "/nonexistent/disk"}]"#),
                "disks[0].path: /nonexistent/disk: No such file",
            ),
            (
                f.json(&format!(
                    r#", "disks": [{{"id": "a", "path": "{disk}"}}, {{"id": "a", "path": "{disk}", "read_only": true}}]"#
                )),
                "disks[1].id: duplicate id \"a\"",
            ),
            (
                f.json(&format!(
                    r#", "disks": [{{"id": "a", "path": "{disk}", "size": 3}}]"#
                )),
                "disks[0].size: unknown field `size`",
            ),
            (
                f.json(r#", "nics": [{"tap": "tap0", "mac": "52:54:00:zz:00:01"}]"#),
                "nics[0].mac: must be xx:xx:xx:xx:xx:xx",
            ),
            (
                f.json(r#", "nics": [{"tap": "tap0", "mac": "01:54:00:00:00:01"}]"#),
                "nics[0].mac: 01:54:00:00:00:01 is a multicast address",
            ),
            (
                f.json(
                    r#", "nics": [{"tap": "tap0", "mac": "52:54:00:00:00:01"}, {"tap": "tap1", "mac": "52:54:00:00:00:01"}]"#,
                ),
                "nics[1].mac: duplicate MAC",
            ),
            (
                f.json(r#", "serial": {"log": "/nonexistent/dir/serial.log"}"#),
                "serial.log: folder /nonexistent/dir does not exist",
            ),
            (
                f.json(r#", "initrd": "/""#),
                "initrd: / is not a regular file",
            ),
            (
                f.json(r#", "display": {"vnc_tcp": "0.0.0.0:5900"}"#),
                "display.vnc_tcp: 0.0.0.0:5900 is not a loopback address",
            ),
            (
                f.json(r#", "display": {"vnc_tcp": "[2001:db8::1]:5900"}"#),
                "display.vnc_tcp: [2001:db8::1]:5900 is not a loopback address",
            ),
            (
                f.json(r#", "display": {"width": 10}"#),
                "display.width: must be between 64 and 8192",
            ),
            (
                f.json(r#", "display": {"width": 8192, "height": 8192}"#),
                "display: 8192x8192 needs",
            ),
            (
                f.json(r#", "display": {"vnc_socket": "/nonexistent/dir/vnc"}"#),
                "display.vnc_socket: folder /nonexistent/dir does not exist",
            ),
            (
                f.json(r#", "display": {"vnc_tcp": "localhost:5900"}"#),
                "display.vnc_tcp: invalid",
            ),
        ];
        for (text, want) in cases {
            let err = f.check(&text).expect_err(&text);
            assert!(err.contains(want), "{text}\n  gave: {err}\n  want: {want}");
        }
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "5:54:00:ab:cd:ef",
            "52-54-00-ab-cd-ef",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
