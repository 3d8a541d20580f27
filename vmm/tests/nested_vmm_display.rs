//! The display with real Linux guests in the nested test host and a real VNC
//! client (vncdotool, from the test venv) on this machine:
//!
//! - the project kernel's simple-framebuffer driver and framebuffer console
//!   take the framebuffer from `screen_info`; a marker printed on tty1 is read
//!   back by OCR (tesseract) from a vncdo screenshot (saved under
//!   `target/test-artifacts/`);
//! - keys typed with vncdo run a command in tty1's shell;
//! - Ctrl-Alt-Del from vncdo reboots the guest in the same VMM process;
//! - Debian's stock kernel binds its efifb driver to the same framebuffer.
//!
//! vncdo reaches the VMM's loopback TCP port in L1 through a port forward and a
//! socat relay in L1 (the VMM itself listens on loopback only).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::nested::{Nested, VNC_TCP, tiny_cmdline};
use serde_json::json;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const BANNER: &str = "=== Mica tiny guest: hostname=";

fn artifacts() -> PathBuf {
    let dir = mica_tests::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs vncdo against `port` on this machine; panics with its output if it fails.
fn vncdo(port: u16, args: &[&str]) {
    let out = Command::new(mica_tests::venv_bin("vncdo"))
        .arg("-s")
        .arg(format!("127.0.0.1::{port}"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vncdo {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The text tesseract reads in a screenshot, upscaled 3× and inverted (the
/// console is light on black, 8×16 pixels a character).
fn ocr(png: &Path) -> String {
    let big = png.with_extension("ocr.png");
    let script = format!(
        "from PIL import Image, ImageOps\n\
         im = ImageOps.invert(Image.open({:?}).convert('L'))\n\
         im.resize((im.width * 3, im.height * 3), Image.LANCZOS).save({:?})\n",
        png.display().to_string(),
        big.display().to_string()
    );
    let status = Command::new(mica_tests::venv_bin("python"))
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "upscaling {}", png.display());
    let out = Command::new("tesseract")
        .arg(&big)
        .arg("stdout")
        .output()
        .expect("tesseract (tesseract-ocr) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nested_display_vnc_ocr_keys_and_ctrl_alt_del() {
    let Some((n, port)) = Nested::boot_for_vnc("vmm-display") else {
        return;
    };
    let _relay = n.vnc_relay();

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let nonce = format!("{:x}", std::process::id() ^ nanos);
    // Letters OCR does not confuse (no I/O/L, no digits).
    let marker: String = format!("MICA{nonce}")
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            '0' => 'Q',
            '1' => 'W',
            '2' => 'R',
            '3' => 'T',
            '4' => 'Y',
            '5' => 'U',
            '6' => 'P',
            '7' => 'K',
            '8' => 'H',
            '9' => 'J',
            c => c,
        })
        .collect();
    let run = format!(
        "dmesg | grep -iE 'simple-framebuffer|simplefb|efifb|fb0|switching to colour frame' | sed 's/^/fbinfo: /'; \
         printf '\\n\\n  %s\\n\\n' {marker} >/dev/tty1"
    );
    let vm = n.start_vm(
        "display",
        json!({
            "vcpus": 1, "memory_mib": 256,
            "kernel": n.kernel.vmlinux(), "initrd": n.images.tiny_initramfs(),
            "cmdline": tiny_cmdline("", Some(&run)),
            "display": {"vnc_socket": "/run/mica-display.vnc", "vnc_tcp": VNC_TCP},
        }),
    );
    vm.wait_serial("=== mica.run exit=0 ===", SECS(240));
    let serial = vm.serial();
    eprintln!(
        "{}",
        serial
            .lines()
            .filter(|l| l.contains("fbinfo:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        serial.contains("fb0: simplefb registered") || serial.contains("simple-framebuffer"),
        "the simple-framebuffer driver did not bind:\n{serial}"
    );

    // The Unix socket speaks RFB from its first byte.
    let greeting =
        n.sh("timeout 10 socat -t 2 - UNIX-CONNECT:/run/mica-display.vnc </dev/null | head -c 12");
    assert_eq!(greeting, "RFB 003.008\n");

    // The marker on tty1, read from a screenshot.
    let shot = artifacts().join(format!("display-tty1-{marker}.png"));
    let deadline = Instant::now() + SECS(120);
    loop {
        vncdo(port, &["capture", &shot.display().to_string()]);
        let text = ocr(&shot);
        if text.replace(' ', "").contains(&marker) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "OCR of {} did not find {marker}:\n{text}",
            shot.display()
        );
        std::thread::sleep(SECS(5));
    }

    // Keys typed through VNC run a command in tty1's shell.
    let word = marker.to_ascii_lowercase();
    vncdo(
        port,
        &[
            "type",
            &format!("echo typed-$((6*7))-{word} >/dev/ttyS0"),
            "key",
            "enter",
        ],
    );
    vm.wait_serial(&format!("typed-42-{word}"), SECS(120));
    let typed = artifacts().join(format!("display-typed-{marker}.png"));
    vncdo(port, &["capture", &typed.display().to_string()]);

    // Ctrl-Alt-Del from the viewer: busybox init reboots, the VMM boots again.
    vncdo(port, &["key", "ctrl-alt-del"]);
    let deadline = Instant::now() + SECS(240);
    while vm.serial().matches(BANNER).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no second boot after Ctrl-Alt-Del\n{}\n{}",
            vm.serial(),
            vm.stderr()
        );
        std::thread::sleep(SECS(1));
    }
    let (status, info) = vm.api("GET", "/vm", None);
    assert_eq!(status, 200);
    assert_eq!(info["boots"], 2, "{info}");
    assert!(
        vm.stderr()
            .contains("Ctrl-Alt-Del typed on the VNC console"),
        "{}",
        vm.stderr()
    );
    let (_, m) = vm.api("GET", "/metrics", None);
    let accepted = m["display"]["vnc_clients_accepted"].as_u64().unwrap();
    assert!(accepted >= 4, "{m}");
    assert!(
        m["display"]["vnc_updates_sent"].as_u64().unwrap() >= 2,
        "{m}"
    );
    vm.api("POST", "/vm/stop", None);
    assert_eq!(vm.wait_exit(SECS(60)), 0);

    // Debian's stock kernel: efifb takes the same framebuffer.
    let vm = n.start_vm(
        "stock-display",
        json!({
            "vcpus": 1, "memory_mib": 512,
            "kernel": n.images.stock_kernel(), "initrd": n.images.stock_initramfs(),
            "cmdline": "console=ttyS0 noxsave panic=-1",
            "display": {"vnc_socket": "/run/mica-stock.vnc"},
        }),
    );
    vm.wait_serial("=== Mica stock-kernel initramfs:", SECS(300));
    let serial = vm.serial();
    let fb_lines: Vec<&str> = serial
        .lines()
        .filter(|l| l.contains("efifb") || l.contains("fb0"))
        .collect();
    eprintln!("stock kernel:\n{}", fb_lines.join("\n"));
    assert!(
        serial.contains("efifb: framebuffer at 0xd0000000"),
        "efifb did not take the framebuffer:\n{serial}"
    );
    vm.api("POST", "/vm/stop", None);
    assert_eq!(vm.wait_exit(SECS(60)), 0);
}
