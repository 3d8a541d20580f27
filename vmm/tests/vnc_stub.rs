//! The framebuffer and VNC server on this machine's `/dev/kvm`, with the
//! framebuffer stub guest (tests/stub/fb.S), which draws a known pattern
//! where `boot_params.screen_info` says the framebuffer is, and a small RFB
//! client (common/rfb.rs). Real Linux guests with a real viewer are in
//! `nested_vmm_display`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::rfb::{self, Client, Format};
use common::{Vmm, kvm_available};
use mica_tests::artifacts::fb_guest;
use serde_json::{Value, json};

const WIDTH: usize = 320;
const HEIGHT: usize = 200;
const V38: &str = "RFB 003.008\n";
const V37: &str = "RFB 003.007\n";
const V33: &str = "RFB 003.003\n";

fn kvm() -> bool {
    mica_tests::require("/dev/kvm", kvm_available())
}

/// The stub's pattern at (x, y), as 0xRRGGBB.
fn pattern(x: usize, y: usize) -> u32 {
    (((x & 0xff) << 16) | ((y & 0xff) << 8) | ((x + y) & 0xff)) as u32
}

struct Display {
    vmm: Vmm,
    socket: PathBuf,
    tcp: SocketAddr,
}

/// Starts the fb stub with `mode` (its command line) and a 320x200 display.
fn start(mode: &str) -> Display {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm.vnc");
    let tcp: SocketAddr = format!("127.0.0.1:{}", mica_tests::free_port())
        .parse()
        .unwrap();
    let vmm = Vmm::start(json!({
        "vcpus": 1,
        "memory_mib": 64,
        "kernel": fb_guest(),
        "cmdline": mode,
        "display": {"width": WIDTH, "height": HEIGHT, "vnc_socket": socket, "vnc_tcp": tcp},
    }));
    vmm.wait_serial("MICA-FB-READY", Duration::from_secs(30));
    // The socket's folder must outlive the test.
    std::mem::forget(dir);
    Display { vmm, socket, tcp }
}

fn display_metrics(vmm: &Vmm) -> Value {
    let (status, m) = vmm.api("GET", "/metrics", None);
    assert_eq!(status, 200);
    m["display"].clone()
}

fn assert_pattern(c: &Client, what: &str) {
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let got = c.screen[y * WIDTH + x];
            assert_eq!(got, pattern(x, y), "{what}: pixel ({x}, {y})");
        }
    }
}

/// A 16 bpp viewer gets each channel to within its precision.
fn assert_pattern_16(c: &Client) {
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let (got, want) = (c.screen[y * WIDTH + x], pattern(x, y));
            for shift in [16, 8, 0] {
                let (g, w) = ((got >> shift) & 0xff, (want >> shift) & 0xff);
                assert!(
                    g.abs_diff(w) <= 4,
                    "pixel ({x}, {y}): {got:06x} for {want:06x}"
                );
            }
        }
    }
}

#[test]
fn vnc_serves_the_guest_screen_raw_and_zrle_to_several_viewers() {
    if !kvm() {
        return;
    }
    let d = start("i");
    // 3.8 on the Unix socket, Raw.
    let mut a = Client::unix(&d.socket, V38).unwrap();
    assert_eq!((a.width, a.height), (WIDTH, HEIGHT));
    assert_eq!(a.format, Format::SERVER);
    a.set_encodings(&[rfb::RAW]);
    a.request(false);
    let rects = a.read_update().unwrap();
    assert!(rects.iter().all(|r| r.encoding == rfb::RAW), "{rects:?}");
    assert_pattern(&a, "3.8, Unix, Raw");

    // 3.3 over TCP, ZRLE, in noVNC's pixel format (red in the low byte), while
    // the first viewer stays connected.
    let mut b = Client::tcp(d.tcp, V33).unwrap();
    b.set_format(Format {
        shift: [0, 8, 16],
        ..Format::SERVER
    });
    b.set_encodings(&[rfb::ZRLE, rfb::RAW]);
    b.request(false);
    let rects = b.read_update().unwrap();
    assert!(rects.iter().all(|r| r.encoding == rfb::ZRLE), "{rects:?}");
    assert_pattern(&b, "3.3, TCP, ZRLE");

    // 3.7, ZRLE, big-endian 32 bpp, then 16 bpp (RGB565) Raw and ZRLE.
    let mut c = Client::unix(&d.socket, V37).unwrap();
    c.set_format(Format {
        big_endian: true,
        ..Format::SERVER
    });
    c.set_encodings(&[rfb::ZRLE]);
    c.request(false);
    c.read_update().unwrap();
    assert_pattern(&c, "3.7, big-endian, ZRLE");
    let rgb565 = Format {
        bpp: 16,
        depth: 16,
        big_endian: false,
        max: [31, 63, 31],
        shift: [11, 5, 0],
    };
    c.set_format(rgb565);
    c.request(false);
    c.read_update().unwrap();
    assert_pattern_16(&c);
    c.set_encodings(&[rfb::RAW]);
    c.request(false);
    c.read_update().unwrap();
    assert_pattern_16(&c);
    drop(c);

    // ZRLE compressed the pattern (Raw: 4 bytes a pixel).
    assert!(
        b.bytes_received < (WIDTH * HEIGHT * 4) as u64,
        "{}",
        b.bytes_received
    );

    // Idle: incremental requests stay pending; nothing is sent.
    let before = display_metrics(&d.vmm);
    a.request(true);
    b.request(true);
    assert!(
        a.quiet_for(Duration::from_millis(1500)),
        "an update on an idle screen"
    );
    assert!(
        b.quiet_for(Duration::from_millis(100)),
        "an update on an idle screen"
    );
    let after = display_metrics(&d.vmm);
    assert_eq!(before["vnc_updates_sent"], after["vnc_updates_sent"]);
    assert_eq!(before["vnc_bytes_sent"], after["vnc_bytes_sent"]);
    assert_eq!(after["vnc_clients_accepted"], 3, "{after}");
    assert_eq!(after["vnc_clients"], 2, "{after}");
    assert_eq!(after["vnc_protocol_errors"], 0, "{after}");
    // 3 + 1 + 3 full updates.
    assert_eq!(after["vnc_updates_sent"], 5, "{after}");
}

#[test]
fn vnc_sends_only_the_lines_the_guest_changed() {
    if !kvm() {
        return;
    }
    // The tick mode writes pixel (0, 0) about every 100M TSC cycles.
    let d = start("t");
    let mut a = Client::unix(&d.socket, V38).unwrap();
    a.set_encodings(&[rfb::ZRLE]);
    a.request(false);
    a.read_update().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "no tick updates: {seen:?}");
        a.request(true);
        let rects = a.read_update().unwrap();
        // One page of the framebuffer: 4096 bytes, 3.2 lines of 1280 bytes.
        for r in &rects {
            assert!(r.y == 0 && r.h <= 4 && r.w as usize == WIDTH, "{rects:?}");
        }
        seen.push(a.screen[0]);
    }
    assert!(
        seen.windows(2).all(|w| w[1] > w[0]),
        "pixel (0, 0) counts up: {seen:?}"
    );
    // The rest of the screen is still the pattern.
    assert_eq!(a.screen[1], pattern(1, 0));
    assert_eq!(a.screen[WIDTH * 10 + 5], pattern(5, 10));
}

#[test]
fn vnc_keys_reach_the_guest_keyboard() {
    if !kvm() {
        return;
    }
    let d = start("k");
    let mut a = Client::tcp(d.tcp, V38).unwrap();
    // 'a', '>' (Shift added around it), Enter, Up, F12.
    a.type_keys(&[u32::from(b'a'), u32::from(b'>'), 0xff0d, 0xff52, 0xffc9]);
    let want = "1e 9e 2a 34 aa b4 1c 9c e0 48 e0 c8 58 d8 ".replace(' ', "\n");
    d.vmm.wait_serial(&want, Duration::from_secs(30));
    // Ctrl-Alt-Del types the sequence the i8042's own Ctrl-Alt-Del does.
    a.key(0xffe3, true);
    a.key(0xffe9, true);
    a.key(0xffff, true);
    a.key(0xffff, false);
    a.key(0xffe9, false);
    a.key(0xffe3, false);
    let cad = "1d 38 e0 53 e0 d3 b8 9d ".replace(' ', "\n");
    d.vmm
        .wait_serial(&format!("{want}{cad}"), Duration::from_secs(30));
    // ... and tells the controller that the guest's coming reset is a reboot.
    d.vmm
        .wait_until(Duration::from_secs(10), "the reboot request", |v| {
            v.stderr()
                .contains("reboot requested: Ctrl-Alt-Del typed on the VNC console")
        });
}

#[test]
fn vnc_malformed_messages_close_only_that_viewer() {
    if !kvm() {
        return;
    }
    let d = start("i");
    let mut good = Client::unix(&d.socket, V38).unwrap();
    good.request(false);
    good.read_update().unwrap();

    // An unknown message type.
    let mut bad = Client::unix(&d.socket, V38).unwrap();
    bad.send_raw(&[99, 1, 2, 3]).unwrap();
    assert!(bad.closed_by_server());
    // A colour-map pixel format.
    let mut bad = Client::tcp(d.tcp, V38).unwrap();
    bad.send_raw(&[0, 0, 0, 0, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    assert!(bad.closed_by_server());
    // Not RFB at all.
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"RFB 003.008\n", "greeting, then closed");
    // A security type that is not offered: 3.8 says why.
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"RFB 003.008\n\x02").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(&all[12..18], &[1, 1, 0, 0, 0, 1], "{all:?}");

    // The good viewer carries on.
    good.request(false);
    good.read_update().unwrap();
    assert_pattern(&good, "after the bad viewers");
    let m = display_metrics(&d.vmm);
    assert_eq!(m["vnc_protocol_errors"], 4, "{m}");
    assert_eq!(m["vnc_clients"], 1, "{m}");
    assert_eq!(m["vnc_clients_accepted"], 5, "{m}");
}

#[test]
fn vnc_viewers_stay_through_a_reboot() {
    if !kvm() {
        return;
    }
    let d = start("i");
    let mut a = Client::unix(&d.socket, V38).unwrap();
    a.set_encodings(&[rfb::ZRLE]);
    a.request(false);
    a.read_update().unwrap();
    assert_pattern(&a, "first boot");
    let (status, _) = d.vmm.api("POST", "/vm/reboot", Some(r#"{"hard": true}"#));
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.vmm.serial().matches("MICA-FB-READY").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no second boot\n{}",
            d.vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.vmm.api("GET", "/vm", None).1["boots"], 2);
    // The same connection sees the new boot's screen (blanked, then drawn).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        a.request(true);
        a.read_update().unwrap();
        if (0..HEIGHT).all(|y| (0..WIDTH).all(|x| a.screen[y * WIDTH + x] == pattern(x, y))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second boot's pattern never came"
        );
    }
    let m = display_metrics(&d.vmm);
    assert_eq!(m["vnc_clients"], 1, "{m}");

    // At exit the viewer is closed and the socket removed.
    let mut d = d;
    d.vmm.api("POST", "/vm/stop", None);
    assert_eq!(d.vmm.wait_exit(Duration::from_secs(10)), 0);
    assert!(a.closed_by_server());
    assert!(!d.socket.exists(), "the VNC socket is removed at exit");
}

#[test]
fn a_vmm_without_a_display_has_no_framebuffer_and_no_vnc_thread() {
    if !kvm() {
        return;
    }
    // screen_info is empty: the stub draws a 0x0 screen and says so.
    let mut vmm =
        Vmm::start(json!({"vcpus": 1, "memory_mib": 64, "kernel": fb_guest(), "cmdline": "i"}));
    vmm.wait_serial("MICA-FB-READY", Duration::from_secs(30));
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", vmm.child.id()))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(threads.iter().any(|t| t == "vcpu0"), "{threads:?}");
    assert!(!threads.iter().any(|t| t == "vnc"), "{threads:?}");
    let m = display_metrics(&vmm);
    assert_eq!(m["vnc_clients_accepted"], 0, "{m}");
    vmm.api("POST", "/vm/stop", None);
    assert_eq!(vmm.wait_exit(Duration::from_secs(10)), 0);
}
