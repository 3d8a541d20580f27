//! Checks of what `make setup` builds: the guest kernel, the guest images, and
//! setup's own idempotence.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use mica_tests::artifacts::{GuestImages, GuestKernel};
use mica_tests::{repo_root, require};

fn kernel() -> Option<GuestKernel> {
    let k = GuestKernel::locate();
    require(
        "the guest kernel",
        k.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    )
    .then(|| k.unwrap())
}

fn images() -> Option<GuestImages> {
    let i = GuestImages::locate();
    require(
        "the guest images",
        i.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    )
    .then(|| i.unwrap())
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The notes of an ELF64 file's PT_NOTE segments as (name, type, descriptor).
fn elf_notes(elf: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let phoff = u64_at(elf, 0x20) as usize;
    let phentsize = u16_at(elf, 0x36) as usize;
    let phnum = u16_at(elf, 0x38) as usize;
    let mut notes = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64_at(elf, ph + 8) as usize, u64_at(elf, ph + 32) as usize);
        let mut at = off;
        while at + 12 <= off + size {
            let namesz = u32_at(elf, at) as usize;
            let descsz = u32_at(elf, at + 4) as usize;
            let kind = u32_at(elf, at + 8);
            let name_at = at + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            let name = String::from_utf8_lossy(&elf[name_at..name_at + namesz])
                .trim_end_matches('\0')
                .to_string();
            notes.push((name, kind, elf[desc_at..desc_at + descsz].to_vec()));
            at = desc_at + descsz.next_multiple_of(4);
        }
    }
    notes
}

#[test]
fn guest_kernel_is_a_64_bit_elf_with_the_pvh_entry_note() {
    let Some(k) = kernel() else { return };
    let elf = std::fs::read(k.vmlinux()).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "vmlinux is not an ELF file");
    assert_eq!(elf[4], 2, "vmlinux is not ELFCLASS64");
    assert_eq!(u16_at(&elf, 0x12), 62, "vmlinux is not x86-64");
    // XEN_ELFNOTE_PHYS32_ENTRY (18) in a "Xen" note: the PVH entry point.
    let notes = elf_notes(&elf);
    let pvh = notes
        .iter()
        .find(|(name, kind, _)| name == "Xen" && *kind == 18)
        .unwrap_or_else(|| panic!("no PVH entry note among {} notes", notes.len()));
    let entry = u32_at(&pvh.2, 0);
    assert!(
        (0x100000..0x4000_0000).contains(&entry),
        "implausible PVH entry {entry:#x}"
    );
}

#[test]
fn guest_bzimage_has_the_linux_boot_protocol_header() {
    let Some(k) = kernel() else { return };
    let img = std::fs::read(k.bzimage()).unwrap();
    assert_eq!(&img[0x202..0x206], b"HdrS", "no setup header signature");
    let protocol = u16_at(&img, 0x206);
    assert!(
        protocol >= 0x020c,
        "boot protocol {protocol:#x} < 2.12 (no 64-bit entry)"
    );
    // xloadflags bit 0: the kernel has a 64-bit entry point at +0x200.
    assert_eq!(img[0x236] & 1, 1, "XLF_KERNEL_64 not set");
}

/// Parses `CONFIG_X=v` and `# CONFIG_X is not set` lines.
fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ")
            && let Some(name) = rest.strip_suffix(" is not set")
        {
            map.insert(name.to_string(), "n".to_string());
        } else if let Some((k, v)) = line.split_once('=')
            && k.starts_with("CONFIG_")
        {
            map.insert(k.to_string(), v.trim_matches('"').to_string());
        }
    }
    map
}

#[test]
fn every_fragment_option_has_a_reason_and_is_set_in_the_final_config() {
    let Some(k) = kernel() else { return };
    let fragment = std::fs::read_to_string(repo_root().join("kernels/microvm.config")).unwrap();
    let final_config = parse_config(&std::fs::read_to_string(k.config()).unwrap());
    let lines: Vec<&str> = fragment.lines().collect();
    let mut checked = 0;
    let mut problems = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((name, want)) = line.split_once('=') else {
            continue;
        };
        if !name.starts_with("CONFIG_") {
            continue;
        }
        let reason = i.checked_sub(1).map(|j| lines[j]).unwrap_or("");
        if !reason.starts_with("# ") || reason.len() < 6 {
            problems.push(format!("{name}: no one-line reason above it"));
        }
        let got = final_config.get(name).map(String::as_str).unwrap_or("n");
        if got != want.trim_matches('"') {
            problems.push(format!(
                "{name}: fragment asks {want}, final .config has {got}"
            ));
        }
        checked += 1;
    }
    assert!(checked > 50, "only {checked} options found in the fragment");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tiny_ext4_image_passes_fsck_and_has_an_init() {
    let Some(i) = images() else { return };
    let out = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(i.tiny_ext4())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("debugfs")
        .args(["-R", "stat /etc/init.d/rcS"])
        .arg(i.tiny_ext4())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Type: regular"), "rcS missing: {text}");
    let out = Command::new("debugfs")
        .args(["-R", "stat /sbin/init"])
        .arg(i.tiny_ext4())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Type: symlink"), "/sbin/init missing: {text}");
}

fn cpio_list(path: &std::path::Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc '{}' | cpio -t --quiet", path.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn initramfs_images_list_init_and_their_payload() {
    let Some(i) = images() else { return };
    let tiny = cpio_list(&i.tiny_initramfs());
    for want in [
        "init",
        "bin/busybox",
        "etc/inittab",
        "etc/init.d/rcS",
        "dev/console",
    ] {
        assert!(
            tiny.iter().any(|f| f == want),
            "tiny initramfs lacks {want}"
        );
    }
    let stock = cpio_list(&i.stock_initramfs());
    for want in [
        "init",
        "lib/modules/virtio_mmio.ko",
        "lib/modules/virtio_blk.ko",
        "lib/modules/virtio_net.ko",
    ] {
        assert!(
            stock.iter().any(|f| f == want),
            "stock initramfs lacks {want}"
        );
    }
    let kernel = std::fs::read(i.stock_kernel()).unwrap();
    assert_eq!(
        &kernel[0x202..0x206],
        b"HdrS",
        "stock kernel is not a bzImage"
    );
}

#[test]
fn a_second_make_setup_is_a_no_op() {
    // `make test` ran setup before the suite: running it again must find nothing
    // to do and say so for every step, quickly.
    if !require(
        "a completed `make setup`",
        GuestKernel::locate()
            .and(GuestImages::locate())
            .map(|_| ())
            .map_err(|e| e.to_string()),
    ) {
        return;
    }
    let kernel_before = std::fs::metadata(GuestKernel::locate().unwrap().vmlinux())
        .unwrap()
        .modified()
        .unwrap();
    let started = Instant::now();
    let out = Command::new("make")
        .args(["-s", "setup"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "make setup failed:\n{text}");
    for want in [
        "packages: all",
        "PostgreSQL ready",
        "RabbitMQ ready",
        "venv: up to date",
        "kernel: up to date",
        "images: up to date",
        "nested: up to date",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    for unwanted in ["installing", "starting", "compiling", "unpacking"] {
        assert!(
            !text.contains(unwanted),
            "a second setup did work ({unwanted}):\n{text}"
        );
    }
    let kernel_after = std::fs::metadata(GuestKernel::locate().unwrap().vmlinux())
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(kernel_before, kernel_after, "the kernel was rebuilt");
    // How long it took is a figure for BENCHMARKS.md, not a pass/fail criterion.
    eprintln!("no-op make setup took {:.1} s", took.as_secs_f64());
}
